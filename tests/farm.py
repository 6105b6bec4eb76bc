"""A real farm for tests and benchmarks: nameko services and workers as processes on one vhost."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp.exceptions
from nameko.exceptions import ReplyQueueExpiredWithPendingReplies, RpcTimeout, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

import shared.errors  # noqa: F401  (so refusals arrive as Corral's own errors)
from shared.config import settings_from_mapping
from shared.credentials import ensure_local_credentials
from shared.identity import CONTEXT_KEY, Role, issue_token
from shared.rpc import cluster_rpc_proxy

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "config.yaml"
AMQP_HOST = os.environ.get("CORRAL_TEST_AMQP_HOST", "127.0.0.1:5672")


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def create_vhost() -> str:
    name = f"corral-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


class Farm:
    """Starts and kills the parts of one farm; every process is a real one."""

    def __init__(self, directory: Path, amqp_uri: str, vhost: str,
                 ctl: Callable[..., str] = rabbitmqctl) -> None:
        self.directory = directory
        self.amqp_uri = amqp_uri
        self.vhost = vhost
        self.ctl = ctl  # rabbitmqctl of the broker this farm runs on (the shared one, or a test's own)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.modules: dict[str, str] = {}  # process name -> the service it runs
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
            # Tests need not find 5 GB free; the storage threshold has tests of its own.
            "CORRAL_STORAGE_MIN_FREE": "50M",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
            "PYTHONUNBUFFERED": "1",
            "CORRAL_CONFIG": str(CONFIG),
            # `corral up` starts a monitor too: on a port of its own, beside other farms.
            "CORRAL_WEB_BIND": f"127.0.0.1:{free_port()}",
        }
        # The farm's secret and credentials, made as `corral up` makes them (see rpc below).
        self.credentials = ensure_local_credentials(settings_from_mapping(
            {"CORRAL": {"data_dir": str(directory / "data")}}))
        self._clients: list[ClusterRpcProxy] = []
        self._rpc: Any = None
        self._counter = 0

    # --- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str],
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "ab")
        process = subprocess.Popen(argv, env={**self.env, **(env or {})}, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_service(self, module: str, env: dict[str, str] | None = None,
                      name: str | None = None) -> subprocess.Popen[bytes]:
        """Start a service; `env` overrides the farm's variables for it (its own broker address
        or database, say); `name` names a second instance's process ("scheduler-2")."""
        name = name or module
        process = self._spawn(name, [sys.executable, "-m", "nameko", "run", "--config",
                                     str(CONFIG), f"services.{module}"], env)
        self.modules[name] = module
        instances = sum(1 for other, running in self.processes.items()
                        if self.modules.get(other) == module and running.poll() is None)
        self.wait_for(lambda: self._service_ready(module, instances), 30, f"{name} to start")
        return process

    def _service_ready(self, module: str, instances: int = 1) -> bool:
        out = self.ctl("list_queues", "-p", self.vhost, "name", "consumers", "--quiet")
        return any(line.split()[:2] == [f"rpc-{module}", str(instances)]
                   for line in out.splitlines() if line.strip())

    def start_worker(self, *extra: str, name: str | None = None,
                     env: dict[str, str] | None = None) -> str:
        """Start a worker (`env` overrides the farm's variables for it) and wait until it has
        registered; its worker id."""
        self._counter += 1
        name = name or f"worker-{self._counter}"
        before = {w["worker_id"] for w in self.rpc.registry.list_workers(alive=True)}
        self._spawn(name, [sys.executable, "-m", "services.cli", "worker", "run", "--config",
                           str(CONFIG), *extra], env)
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

    def start_monitor(self, *extra: str, workers: int = 2) -> str:
        """The monitor under gunicorn on a free port of this machine; its base URL."""
        port = free_port()
        self._spawn("monitor", [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                "--workers", str(workers), "--threads", "4", "--timeout", "60",
                                *extra, "web:create_app()"])
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        self.wait_for(answers, 30, "the monitor to answer")
        return url

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
        self.reconnect()

    # --- talking to it --------------------------------------------------------------------------

    @property
    def rpc(self) -> Any:
        """The farm's RPC as its own parts call it: a worker-facing method with the farm's
        worker credential, every other with the local farm's admin credential."""
        if self._rpc is None:
            self._rpc = _CredentialedRpc(self.client(self.credentials.admin_token),
                                         self.client(self.credentials.worker_token))
        return self._rpc

    def client(self, token: str | None) -> Any:
        """A started RPC client presenting `token` (None: no token at all), stopped with the farm."""
        client = cluster_rpc_proxy(self.amqp_uri, timeout=20,
                                   context_data={} if token is None else {CONTEXT_KEY: token})
        self._clients.append(client)
        return client.start()

    def token_for(self, user: str, role: Role, **options: Any) -> str:
        """A token signed with this farm's secret, as the registry would issue it."""
        return issue_token(self.credentials.secret, user, role, **options)

    def reconnect(self) -> None:
        """New clients: the old ones' connection was closed by the broker."""
        for client in self._clients:
            try:
                client.stop()
            except Exception:  # its connection is already gone
                pass
        self._clients.clear()
        self._rpc = None

    def submit(self, tasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        return self.rpc.scheduler.submit_job({"tasks": tasks, **spec})

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except (ConnectionError, OSError, amqp.exceptions.ConnectionError,
                    ReplyQueueExpiredWithPendingReplies):
                # The broker closed this test's own connection, or its node (and the reply
                # queue there) went down: open another.
                self.reconnect()
                value = None
            except UnknownService:
                value = None  # not started yet
            except RpcTimeout:
                value = None  # a service still coming back (after a broker restart, say)
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
        out = self.ctl("list_queues", "-p", self.vhost, "name", "messages_ready",
                          "messages_unacknowledged", "--quiet")
        counts = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit():
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts


def _worker_methods() -> dict[str, set[str]]:
    """service -> the RPC methods only the worker credential may call (their declared rules)."""
    from services.common.access import rpc_methods, rule_of
    from services.license import LicenseService
    from services.registry import RegistryService
    from services.resource_negotiator import ResourceNegotiatorService
    from services.scheduler import SchedulerService

    found: dict[str, set[str]] = {}
    for service in (SchedulerService, RegistryService, ResourceNegotiatorService, LicenseService):
        found[service.name] = {name for name, method in rpc_methods(service).items()
                               if (rule := rule_of(method)) is not None
                               and rule.minimum is Role.WORKER}
    return found


class _CredentialedRpc:
    """`rpc.<service>.<method>` through the client whose credential that method accepts."""

    def __init__(self, person: Any, worker: Any) -> None:
        self._person, self._worker = person, worker
        self._worker_methods = _worker_methods()

    def __getattr__(self, service: str) -> Any:
        return _CredentialedService(self, service)


class _CredentialedService:
    def __init__(self, rpc: _CredentialedRpc, service: str) -> None:
        self._rpc, self._service = rpc, service

    def __getattr__(self, method: str) -> Any:
        worker_side = method in self._rpc._worker_methods.get(self._service, set())
        client = self._rpc._worker if worker_side else self._rpc._person
        return getattr(getattr(client, self._service), method)


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


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "20m") mounted on a new `directory`, unmounted afterwards: a
    small disk that fills up for real."""
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(directory)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise RuntimeError(f"mounting a tmpfs on {directory} failed: {mounted.stderr}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid still exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
