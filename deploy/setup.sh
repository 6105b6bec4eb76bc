#!/usr/bin/env bash
# Sourced by farm.sh and test.sh: a virtualenv with Corral installed, the local services up, and
# for the tests the docker-compose validator.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

install_corral() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "corral: creating a virtualenv in $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.corral-installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        echo "corral: installing Corral and its dependencies"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
        touch "$stamp"
    fi
}

port_open() {
    "$VENV/bin/python" - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

wait_for_port() {
    # wait_for_port PORT SECONDS WHAT: true once 127.0.0.1:PORT answers, else say so.
    for _ in $(seq 1 "$2"); do
        if port_open 127.0.0.1 "$1"; then return 0; fi
        sleep 1
    done
    echo "corral: $3 did not come up on 127.0.0.1:$1" >&2
    return 1
}

ensure_apt_packages() {
    # ensure_apt_packages WHY PACKAGE...: install Debian packages, or say how to when we cannot.
    local why="$1"
    shift
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "corral: $* needed ($why), and this is not root, with no sudo." >&2
            echo "        Install them (Debian/Ubuntu: sudo apt-get install $*) and run again." >&2
            return 1
        fi
        sudo="sudo"
    fi
    if ! command -v apt-get >/dev/null; then
        echo "corral: $* needed ($why), and apt-get is not available: install them and run again." >&2
        return 1
    fi
    echo "corral: installing $* ($why)"
    # No recommends: nothing here needs desktop integration, and docker.io would bring an engine.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "$@" </dev/null >/dev/null
}

ensure_rabbitmq() {
    if port_open 127.0.0.1 5672; then return 0; fi
    if ! command -v rabbitmq-server >/dev/null; then
        echo "corral: RabbitMQ is not running on 127.0.0.1:5672 and is not installed." >&2
        echo "        Install it (Debian/Ubuntu: sudo apt-get install rabbitmq-server) and run again." >&2
        return 1
    fi
    echo "corral: starting RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached
    wait_for_port 5672 60 RabbitMQ
}

ensure_postgresql() {
    if port_open 127.0.0.1 5432; then return 0; fi
    if ! command -v pg_ctlcluster >/dev/null; then
        echo "corral: PostgreSQL is not running on 127.0.0.1:5432 and pg_ctlcluster is missing." >&2
        return 1
    fi
    echo "corral: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_for_port 5432 30 PostgreSQL
}

ensure_compose_validator() {
    # The tests validate docker-compose.yml with `docker-compose config -q`, which needs no engine.
    if command -v docker-compose >/dev/null; then return 0; fi
    ensure_apt_packages "the tests validate docker-compose.yml with it" docker-compose
    if ! command -v docker-compose >/dev/null; then
        echo "corral: docker-compose is still missing after apt-get install docker-compose" >&2
        return 1
    fi
}
