"""deploy/setup.sh on a fresh machine: RabbitMQ missing is installed with apt-get and started, or the
script says exactly what to run; a broker already running is left alone.

Every program the script may call is a stand-in on a PATH of its own that records how it was called,
so nothing is installed and the machine's own broker is never touched: the broker looked for is on a
free port of this machine's loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.farm import ROOT

SETUP = ROOT / "deploy" / "setup.sh"
# What setup.sh runs besides the stand-ins; linked into the PATH one by one so that nothing else
# on this machine (its real rabbitmq-server, apt-get or sudo) can be reached.
REAL_TOOLS = ("bash", "env", "id", "seq", "sleep", "grep", "sed", "ls", "sort", "tail", "cat",
              "true", "chmod", "dirname")

APT_GET = """#!/bin/bash
echo "$*" >> "$LOG_DIR/apt-get"
# Installing rabbitmq-server puts a stand-in broker where Debian puts it.
if [ "$1" = install ] && [[ " $* " == *" rabbitmq-server "* ]]; then
    cat > "$SBIN/rabbitmq-server" <<'BROKER'
#!/bin/bash
echo "$* port=$RABBITMQ_NODE_PORT" >> "$LOG_DIR/rabbitmq-server"
# -detached: something listens on the broker's port for a while, as the real one would.
"$TEST_PYTHON" -c '
import socket, sys, time
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
time.sleep(60)' "$RABBITMQ_NODE_PORT" </dev/null >/dev/null 2>&1 &
echo $! > "$LOG_DIR/broker.pid"
BROKER
    chmod +x "$SBIN/rabbitmq-server"
fi
"""

NOT_ROOT = """#!/bin/bash
if [ "$1" = -u ]; then echo 1000; else echo "uid=1000(artist) gid=1000(artist)"; fi
"""

SUDO = """#!/bin/bash
echo "$*" >> "$LOG_DIR/sudo"
if [ "$1" = -n ]; then shift; fi
exec "$@"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Machine:
    """A PATH with stand-ins, a sbin folder, and the logs they write."""

    bin: Path
    sbin: Path
    logs: Path
    port: int

    def stand_in(self, name: str, script: str) -> None:
        path = self.bin / name
        # Replace a link to the real program, never write through it.
        path.unlink(missing_ok=True)
        path.write_text(script)
        path.chmod(0o755)

    def calls(self, program: str) -> list[str]:
        log = self.logs / program
        return log.read_text().splitlines() if log.exists() else []

    def run(self, function: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": str(self.bin), "HOME": str(self.logs), "LOG_DIR": str(self.logs),
               "SBIN": str(self.sbin), "CORRAL_SBIN_PATH": str(self.sbin),
               "CORRAL_VENV": sys.prefix, "TEST_PYTHON": sys.executable,
               "RABBITMQ_NODE_PORT": str(self.port)}
        return subprocess.run([str(self.bin / "bash"), "-c", f'source "{SETUP}"; {function}'],
                              env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    bin_dir, sbin, logs = tmp_path / "bin", tmp_path / "sbin", tmp_path / "logs"
    for folder in (bin_dir, sbin, logs):
        folder.mkdir()
    for tool in REAL_TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run deploy/setup.sh"
        (bin_dir / tool).symlink_to(found)
    fresh = Machine(bin_dir, sbin, logs, free_port())
    fresh.stand_in("apt-get", APT_GET)
    yield fresh
    pid_file = logs / "broker.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_missing_rabbitmq_is_installed_with_apt_get_and_started_as_root(machine: Machine) -> None:
    done = machine.run("ensure_rabbitmq")
    assert done.returncode == 0, done.stderr
    assert machine.calls("apt-get") == [
        "update -qq", "install -y -qq --no-install-recommends rabbitmq-server"]
    assert machine.calls("rabbitmq-server") == [f"-detached port={machine.port}"]
    assert "installing rabbitmq-server" in done.stdout


def test_without_root_or_sudo_the_script_says_what_to_run_and_installs_nothing(
        machine: Machine) -> None:
    machine.stand_in("id", NOT_ROOT)
    done = machine.run("ensure_rabbitmq")
    assert done.returncode != 0
    assert "Run: sudo apt-get install rabbitmq-server" in done.stderr
    assert machine.calls("apt-get") == []
    assert machine.calls("rabbitmq-server") == []


def test_without_root_a_working_sudo_installs_and_starts_rabbitmq(machine: Machine) -> None:
    machine.stand_in("id", NOT_ROOT)
    machine.stand_in("sudo", SUDO)
    done = machine.run("ensure_rabbitmq")
    assert done.returncode == 0, done.stderr
    sudo_calls = machine.calls("sudo")
    assert "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends " \
           "rabbitmq-server" in sudo_calls
    assert any(call.endswith("rabbitmq-server -detached") for call in sudo_calls), sudo_calls
    assert machine.calls("rabbitmq-server") == [f"-detached port={machine.port}"]


def test_a_broker_already_answering_is_left_alone(machine: Machine) -> None:
    with socket.create_server(("127.0.0.1", machine.port)):
        done = machine.run("ensure_rabbitmq")
    assert done.returncode == 0, done.stderr
    assert machine.calls("apt-get") == []
    assert machine.calls("rabbitmq-server") == []


def test_installed_but_stopped_rabbitmq_is_started_without_apt_get(machine: Machine) -> None:
    installed = machine.run("ensure_apt_packages test rabbitmq-server")
    assert installed.returncode == 0, installed.stderr
    (machine.logs / "apt-get").unlink()
    done = machine.run("ensure_rabbitmq")
    assert done.returncode == 0, done.stderr
    assert machine.calls("apt-get") == []
    assert machine.calls("rabbitmq-server") == [f"-detached port={machine.port}"]


def test_farm_and_test_scripts_install_and_start_rabbitmq_before_running() -> None:
    for script in ("farm.sh", "test.sh"):
        lines = [line.strip() for line in (ROOT / "deploy" / script).read_text().splitlines()]
        assert lines.index("install_corral") < lines.index("ensure_rabbitmq") \
            < next(i for i, line in enumerate(lines) if line.startswith("exec ")), script
