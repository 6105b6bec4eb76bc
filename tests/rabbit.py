"""RabbitMQ nodes of a test's own: started, stopped, restarted and cut off without the shared broker.

A test that needs a broker restart, an outage or closed connections runs its farm against a node
it owns (own node name, ports, cookie and data folder under the test's directory), so the
machine's broker and every other test's connections are never touched. `RabbitCluster` joins
several such nodes into one cluster, for quorum queues and failover between nodes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""Where Debian's package keeps the scripts that run as the calling user (no switch to rabbitmq)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _tool(name: str) -> str:
    local = RABBIT_BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: the suite needs Debian's rabbitmq-server")
    return found


class RabbitNode:
    """One RabbitMQ node of the test's own, on free ports, with its data under `directory`."""

    def __init__(self, directory: Path, name: str | None = None, cookie: str | None = None) -> None:
        self.directory = directory
        self.name = name or f"corral-test-{uuid.uuid4().hex[:8]}"
        self.node = f"{self.name}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.cookie = cookie or uuid.uuid4().hex
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # Quick to notice a dead peer, as a test's few-second leases need.
            "heartbeat = 5\n")
        (directory / "enabled_plugins").write_text("[].\n")
        cookie_file = directory / ".erlang.cookie"
        cookie_file.write_text(self.cookie)
        cookie_file.chmod(0o400)

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def vhost_uri(self, vhost: str) -> str:
        return f"{self.uri}{vhost}"

    @property
    def env(self) -> dict[str, str]:
        d = self.directory
        return {**os.environ, "HOME": str(d), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
                "RABBITMQ_PID_FILE": str(d / "pid")}

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run([_tool("rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node} failed: "
                               f"{done.stderr or done.stdout}")
        return done.stdout

    def start(self, timeout: float = 60) -> RabbitNode:
        # A node whose last VM has not quite gone refuses to start under the same name; the
        # second try comes once that VM is surely dead.
        for tries_left in (1, 0):
            subprocess.run([_tool("rabbitmq-server"), "-detached"], env=self.env, check=True,
                           capture_output=True, timeout=30)
            deadline = time.monotonic() + (timeout if tries_left == 0 else timeout / 2)
            while time.monotonic() < deadline:
                if _port_open(self.port):
                    return self
                time.sleep(0.2)
            self.kill()
            self._wait_for_exit(10)
        raise RuntimeError(f"RabbitMQ node {self.node} did not open port {self.port}: "
                           f"{self.log_tail()}")

    def _pid(self) -> int | None:
        try:
            return int((self.directory / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_for_exit(self, seconds: float) -> bool:
        """Wait until the node's VM has exited (True), or `seconds` have passed (False)."""
        pid = self._pid()
        deadline = time.monotonic() + seconds
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return pid is None

    def stop(self) -> None:
        """Stop the node cleanly (its durable queues and persistent messages stay on disk)."""
        try:
            self.ctl("stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill()
        deadline = time.monotonic() + 30
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        # The port closes before the VM has gone; a start meanwhile would find the name taken.
        if not self._wait_for_exit(30):
            self.kill()
            self._wait_for_exit(10)

    def kill(self) -> None:
        """Kill the node's Erlang VM at once, as a crash or a lost machine would."""
        pid = self._pid()
        if pid is not None:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close_all_connections(self) -> None:
        self.ctl("close_all_connections", "chaos test")

    def add_vhost(self, name: str) -> None:
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")

    def log_tail(self, size: int = 3000) -> str:
        logs = sorted((self.directory / "log").glob("*.log")) if (self.directory / "log").exists() \
            else []
        return "\n".join(path.read_text(errors="replace")[-size:] for path in logs)


class RabbitCluster:
    """`size` nodes of the test's own (one cookie, own names and ports) joined in one cluster."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        cookie, prefix = uuid.uuid4().hex, f"corral-test-{uuid.uuid4().hex[:6]}"
        self.nodes = [RabbitNode(directory / f"node-{i}", name=f"{prefix}-{i}", cookie=cookie)
                      for i in range(size)]
        self.stopped: set[str] = set()

    def start(self) -> RabbitCluster:
        with ThreadPoolExecutor(len(self.nodes)) as starting:
            list(starting.map(lambda node: node.start(), self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        for node in self.nodes:
            node.ctl("await_startup")
        return self

    def vhost_uri(self, vhost: str) -> str:
        """Every node's URL for `vhost`, `;` between them, as a farm on a cluster is given."""
        return ";".join(node.vhost_uri(vhost) for node in self.nodes)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """rabbitmqctl on a node that is up (any node answers for the whole cluster)."""
        running = [node for node in self.nodes if node.node not in self.stopped]
        return running[0].ctl(*args, timeout=timeout)

    def stop_node(self, node: RabbitNode) -> None:
        self.stopped.add(node.node)
        node.stop()

    def start_node(self, node: RabbitNode) -> None:
        node.start()
        node.ctl("await_startup")
        self.stopped.discard(node.node)

    def add_vhost(self, name: str) -> None:
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as stopping:
            list(stopping.map(lambda node: node.stop(), self.nodes))
