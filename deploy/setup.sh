#!/usr/bin/env bash
# Sourced by farm.sh and test.sh: on a fresh Debian or Ubuntu machine, installs what Corral needs
# (Python's venv, RabbitMQ, for the tests PostgreSQL and the docker-compose validator) with apt-get
# when this is root or sudo works, and otherwise says exactly what to run; then a virtualenv with
# Corral installed and the local services up.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# RabbitMQ's own variable for its AMQP port: the port checked, and the one a broker started here uses.
RABBITMQ_NODE_PORT="${RABBITMQ_NODE_PORT:-5672}"
# Debian puts daemons in sbin, which is not on an ordinary user's PATH.
CORRAL_SBIN_PATH="${CORRAL_SBIN_PATH:-/usr/local/sbin:/usr/sbin:/sbin}"

say() { echo "corral: $*"; }
complain() { echo "corral: $*" >&2; }

find_program() {
    # find_program NAME: its path, looking in sbin too; nothing (and false) when it is missing.
    PATH="$PATH:$CORRAL_SBIN_PATH" command -v "$1"
}

root_prefix() {
    # Prints what runs a command as root: nothing when this is root, "sudo" when sudo works (without
    # a password, or with one typed at this terminal); fails when neither.
    if [ "$(id -u)" -eq 0 ]; then return 0; fi
    if ! command -v sudo >/dev/null; then return 1; fi
    if sudo -n true 2>/dev/null || [ -t 0 ]; then
        echo sudo
        return 0
    fi
    return 1
}

ensure_apt_packages() {
    # ensure_apt_packages WHY PACKAGE...: install Debian packages, or say how to and fail.
    local why="$1"
    shift
    local sudo
    if ! sudo="$(root_prefix)"; then
        complain "$* needed ($why); this is not root and sudo cannot be used here."
        complain "    Run: sudo apt-get install $*"
        complain "    then run this command again."
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        complain "$* needed ($why), and apt-get is not available: install them and run again."
        return 1
    fi
    say "installing $* ($why)"
    # No recommends: nothing here needs desktop integration, and docker.io would bring an engine.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "$@" </dev/null >/dev/null
}

ensure_python_venv() {
    # Debian's python3 makes a venv only with python3-venv (ensurepip) installed.
    if command -v "$PYTHON" >/dev/null && "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        return 0
    fi
    ensure_apt_packages "Corral runs in a Python virtualenv" python3 python3-venv
}

install_corral() {
    if [ ! -x "$VENV/bin/python" ]; then
        ensure_python_venv
        say "creating a virtualenv in $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.corral-installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing Corral and its dependencies"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
        touch "$stamp"
    fi
}

port_open() {
    # port_open HOST PORT: true when something accepts a TCP connection there.
    "${VENV}/bin/python" - "$1" "$2" <<'PY'
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
    complain "$3 did not come up on 127.0.0.1:$1"
    return 1
}

ensure_rabbitmq() {
    # RabbitMQ on 127.0.0.1:$RABBITMQ_NODE_PORT: left alone when it answers, else installed if
    # missing and started.
    if port_open 127.0.0.1 "$RABBITMQ_NODE_PORT"; then return 0; fi
    if ! find_program rabbitmq-server >/dev/null; then
        ensure_apt_packages "the farm's message broker" rabbitmq-server
        # Debian's package starts the broker itself where a service manager runs.
        if port_open 127.0.0.1 "$RABBITMQ_NODE_PORT"; then return 0; fi
    fi
    local server sudo
    if ! server="$(find_program rabbitmq-server)"; then
        complain "rabbitmq-server is still missing after apt-get install rabbitmq-server"
        return 1
    fi
    # The broker keeps its data under /var/lib/rabbitmq, which only root and its own user write.
    if ! sudo="$(root_prefix)"; then
        complain "RabbitMQ is installed but not running, and this is not root."
        complain "    Run: sudo systemctl start rabbitmq-server   (or: sudo rabbitmq-server -detached)"
        return 1
    fi
    say "starting RabbitMQ ($server -detached)"
    # It refuses when a broker is already starting (Debian's package may have started one that is
    # not listening yet): either way, what counts is the port answering.
    $sudo env RABBITMQ_NODE_PORT="$RABBITMQ_NODE_PORT" "$server" -detached \
        || complain "rabbitmq-server -detached failed; waiting in case a broker is already starting"
    wait_for_port "$RABBITMQ_NODE_PORT" 60 RabbitMQ
}

ensure_postgresql() {
    # The suite's PostgreSQL: 127.0.0.1:5432, user postgres with trust auth (a test machine's).
    if port_open 127.0.0.1 5432; then return 0; fi
    if ! find_program pg_ctlcluster >/dev/null; then
        ensure_apt_packages "the tests run the database layer against PostgreSQL" postgresql
    fi
    local version sudo
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$version" ]; then
        complain "PostgreSQL is installed but has no cluster in /etc/postgresql"
        return 1
    fi
    if ! sudo="$(root_prefix)"; then
        complain "PostgreSQL is installed but not running, and this is not root."
        complain "    Run: sudo pg_ctlcluster $version main start"
        return 1
    fi
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! $sudo grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        # The suite logs in as postgres without a password; only from this machine's loopback.
        say "letting the tests log in to PostgreSQL from 127.0.0.1 without a password ($hba)"
        $sudo sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    local ctl
    ctl="$(find_program pg_ctlcluster)"
    if port_open 127.0.0.1 5432; then
        # Debian's package started the cluster itself: it only has to read pg_hba.conf again.
        $sudo "$ctl" --skip-systemctl-redirect "$version" main reload
        return 0
    fi
    say "starting PostgreSQL $version"
    # As for RabbitMQ: a cluster the package is still starting refuses a second start.
    $sudo "$ctl" --skip-systemctl-redirect "$version" main start \
        || complain "pg_ctlcluster start failed; waiting in case PostgreSQL is already starting"
    wait_for_port 5432 30 PostgreSQL
}

ensure_compose_validator() {
    # The tests validate docker-compose.yml with `docker-compose config -q`, which needs no engine.
    if command -v docker-compose >/dev/null; then return 0; fi
    ensure_apt_packages "the tests validate docker-compose.yml with it" docker-compose
    if ! command -v docker-compose >/dev/null; then
        complain "docker-compose is still missing after apt-get install docker-compose"
        return 1
    fi
}

ensure_unit_validator() {
    # The tests check deploy/systemd/ with `systemd-analyze verify`, which needs no running systemd.
    if find_program systemd-analyze >/dev/null; then return 0; fi
    ensure_apt_packages "the tests check the systemd unit with systemd-analyze" systemd
}

ensure_chromium() {
    # The browser tests drive Debian's chromium with Playwright (Playwright cannot download its own).
    if [ -x /usr/bin/chromium ]; then return 0; fi
    ensure_apt_packages "the browser tests drive it with Playwright" chromium
    if [ ! -x /usr/bin/chromium ]; then
        echo "corral: /usr/bin/chromium is still missing after apt-get install chromium" >&2
        return 1
    fi
}
