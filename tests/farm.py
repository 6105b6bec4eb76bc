"""A real farm for tests and benchmarks: nameko services and workers as processes on one vhost."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp.exceptions
from nameko.exceptions import UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

import shared.errors  # noqa: F401  (so refusals arrive as Corral's own errors)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "config.yaml"
AMQP_HOST = os.environ.get("CORRAL_TEST_AMQP_HOST", "127.0.0.1:5672")


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def create_vhost() -> str:
    name = f"corral-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


class Farm:
    """Starts and kills the parts of one farm; every process is a real one."""

    def __init__(self, directory: Path, amqp_uri: str, vhost: str) -> None:
        self.directory = directory
        self.amqp_uri = amqp_uri
        self.vhost = vhost
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "CORRAL_AMQP_URI": amqp_uri,
            "CORRAL_DATA_DIR": str(directory / "data"),
            "CORRAL_STORAGE_ROOT": str(directory / "storage"),
            "CORRAL_LEASE_SECONDS": "3",
            "CORRAL_HEARTBEAT_SECONDS": "0.5",
            "CORRAL_WORKER_LOST_AFTER": "3",
            "CORRAL_REDISPATCH_SECONDS": "5",
            "CORRAL_RPC_TIMEOUT": "3",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
            "PYTHONUNBUFFERED": "1",
        }
        self._rpc_client: ClusterRpcProxy | None = None
        self._rpc: Any = None
        self._counter = 0

    # --- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "ab")
        process = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_service(self, module: str) -> subprocess.Popen[bytes]:
        process = self._spawn(module, [sys.executable, "-m", "nameko", "run", "--config",
                                       str(CONFIG), f"services.{module}"])
        self.wait_for(lambda: self._service_ready(module), 30, f"{module} to start")
        return process

    def _service_ready(self, module: str) -> bool:
        out = rabbitmqctl("list_queues", "-p", self.vhost, "name", "consumers", "--quiet")
        return any(line.split()[:2] == [f"rpc-{module}", "1"] for line in out.splitlines()
                   if line.strip())

    def start_worker(self, *extra: str, name: str | None = None) -> str:
        self._counter += 1
        name = name or f"worker-{self._counter}"
        before = {w["worker_id"] for w in self.rpc.registry.list_workers(alive=True)}
        self._spawn(name, [sys.executable, "-m", "services.cli", "worker", "--config",
                           str(CONFIG), *extra])
        found: list[str] = []

        def registered() -> bool:
            now = {w["worker_id"] for w in self.rpc.registry.list_workers(alive=True)}
            found[:] = sorted(now - before)
            return bool(found)

        self.wait_for(registered, 30, f"{name} to register")
        return found[0]

    def start(self, workers: int = 2) -> "Farm":
        self.start_service("registry")
        self.start_service("scheduler")
        for _ in range(workers):
            self.start_worker()
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.send_signal(sig)
        process.wait(30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait(30)
        if self._rpc_client is not None:
            self._rpc_client.stop()

    # --- talking to it --------------------------------------------------------------------------

    @property
    def rpc(self) -> Any:
        if self._rpc is None:
            self._rpc_client = ClusterRpcProxy(uri=self.amqp_uri, timeout=20)
            self._rpc = self._rpc_client.start()
        return self._rpc

    def reconnect(self) -> None:
        """A new client: the old one's connection was closed by the broker."""
        if self._rpc_client is not None:
            try:
                self._rpc_client.stop()
            except Exception:  # its connection is already gone
                pass
        self._rpc_client = self._rpc = None

    def submit(self, tasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        return self.rpc.scheduler.submit_job({"tasks": tasks, **spec})

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except (ConnectionError, OSError, amqp.exceptions.ConnectionError):
                self.reconnect()  # the broker closed this test's own connection: open another
                value = None
            except UnknownService:
                value = None  # not started yet
            if value:
                return value
            time.sleep(0.1)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.directory.glob("*.log")))
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")

    def wait_for_job(self, job_id: int, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(
            lambda: (lambda job: job if job["state"] in ("done", "failed", "cancelled")
                     else None)(self.rpc.scheduler.get_job(job_id)),
            timeout, f"job {job_id} to finish")

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """queue -> (ready messages, unacknowledged messages), as the broker reports them."""
        out = rabbitmqctl("list_queues", "-p", self.vhost, "name", "messages_ready",
                          "messages_unacknowledged", "--quiet")
        counts = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit():
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts


def host_free(farm: Farm) -> tuple[float, int] | None:
    """The one host's free cores and memory (MB), as the negotiator says; None before it reports."""
    hosts = farm.rpc.resource_negotiator.list_hosts()
    if not hosts:
        return None
    (host,) = hosts
    return host["free"]["cores"], host["free"]["memory_mb"]


def wait_until(path: Path) -> list[str]:
    """A task that runs until `path` exists: a test decides when it ends."""
    return ["sh", "-c", f"while [ ! -e {path} ]; do sleep 0.05; done"]
