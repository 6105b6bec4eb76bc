"""The chaos harness: a farm of real processes on its own RabbitMQ node, work flowing, faults injected.

A run starts the services and workers on a vhost of a node the run owns (each worker through
a TCP proxy of its own, so one can be cut off while it lives), submits jobs whose payloads write
to a ledger (tests/chaos/payload.py; some hostile, some holding a licence), injects faults at
random moments chosen from a seed (printed, so a failing run can be replayed), waits for every
accepted task to end, and judges the ledger against the scheduler's records
(tests/chaos/ledger.py), with every reservation, licence and payload process given back.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
from kombu import Connection
from sqlalchemy import create_engine, text

from shared.bands import REPORTS_QUEUE, queue_name
from tests.chaos.ledger import Verdict, judge, lives, read_ledger
from tests.farm import CONFIG, Farm
from tests.proxy import TcpProxy
from tests.rabbit import RabbitCluster, RabbitNode

PAYLOAD = Path(__file__).resolve().parent / "payload.py"
SERVICES = ("registry", "scheduler", "resource_negotiator", "license", "cleanup")
LICENCE = "chaos-seat"
"""A licence pool of two seats that a third of the tasks hold while they run."""
HOSTILE = ("ignore-term", "children", "daemon", "flood")
MEMORY_HOG = ("import time; hog = bytearray(256 << 20); hog[::4096] = b'x' * len(hog[::4096]); "
              "time.sleep(30)")
"""A task asking for 64 MB that takes 256: its memory guard must end it, every attempt."""


class ChaosRun:
    """One farm under faults: start it, put work through it, break things, judge the outcome."""

    def __init__(self, directory: Path, node: RabbitNode | RabbitCluster, seed: int,
                 workers: int = 3, database_url: str | None = None,
                 storage_root: Path | None = None, pool: bool = False, schedulers: int = 1,
                 scheduler_env: Callable[[int], dict[str, str]] | None = None) -> None:
        self.directory = directory
        self.node = node
        self.seed = seed
        self.random = random.Random(seed)
        self.vhost = f"chaos-{uuid.uuid4().hex[:8]}"
        node.add_vhost(self.vhost)
        self.farm = Farm(directory, node.vhost_uri(self.vhost), self.vhost, ctl=node.ctl)
        self.farm.env["CORRAL_LICENCES"] = json.dumps({LICENCE: {"count": 2}})
        self.farm.env["CORRAL_LOG_MAX_BYTES"] = str(1 << 20)  # a flood meets the cap
        self.farm.env["CORRAL_LOG_HEAD_BYTES"] = str(64 << 10)
        if storage_root is not None:
            self.farm.env["CORRAL_STORAGE_ROOT"] = str(storage_root)
        self.storage_root = storage_root
        self.proxies = ExitStack()
        self.proxy_of: dict[str, TcpProxy] = {}
        self.hostile_jobs: list[int] = []
        self.pool = pool  # the workers run under `corral pool` rather than on their own
        self.database_url = database_url
        if database_url is not None:
            # Every service on the one PostgreSQL database, as a studio runs them.
            for name in ("SCHEDULER", "REGISTRY", "NEGOTIATOR", "LICENCE"):
                self.farm.env[f"CORRAL_{name}_DB"] = database_url
        self.ledger = directory / "ledger.jsonl"
        self.worker_count = workers
        self.scheduler_count = schedulers
        # Variables of the nth scheduler instance (from 1), e.g. a name of its own.
        self.scheduler_env = scheduler_env or (lambda number: {})
        self.workers: list[str] = []   # process names of the live workers
        self.jobs: list[int] = []
        self.injected: list[str] = []

    # --- the farm ----------------------------------------------------------------------------

    def start(self) -> ChaosRun:
        """Every service at once (any order is one a restart can give), then the workers."""
        for service in SERVICES:
            self._spawn_service(service, service, self.scheduler_env(1)
                                if service == "scheduler" else None)
        for number in range(2, self.scheduler_count + 1):
            self._spawn_service(f"scheduler-{number}", "scheduler", self.scheduler_env(number))
        self.farm.wait_for(self._services_ready, 60, "the services to start")
        if self.pool:
            self.start_pool()
            return self
        for _ in range(self.worker_count):
            self.add_worker()
        return self

    def start_pool(self) -> None:
        """`corral pool` keeping `worker_count` workers, idle or not; waits until they are up."""
        before = len(self.farm.rpc.registry.list_workers(alive=True))
        self.farm._spawn("pool", [sys.executable, "-m", "services.cli", "pool", "--config",
                                  str(CONFIG), "--max-workers", str(self.worker_count),
                                  "--min-idle", str(self.worker_count)])
        self.farm.wait_for(lambda: len(self.farm.rpc.registry.list_workers(alive=True))
                           >= min(before + 1, self.worker_count), 60, "the pool's workers")

    def kill_pool(self) -> None:
        """kill -9 of the pool: its workers are told to stop and finish what they run; a new
        pool starts beside them, as its service manager would restart it."""
        self.farm.kill("pool")
        time.sleep(self.random.uniform(0.2, 1.5))
        self.start_pool()

    def kill_pool_worker(self) -> None:
        """kill -9 of one of the pool's workers: the pool starts another."""
        children = psutil.Process(self.farm.processes["pool"].pid).children()
        workers = [child for child in children if "worker" in " ".join(child.cmdline())]
        if workers:
            self.random.choice(workers).kill()

    def _spawn_service(self, name: str, service: str, env: dict[str, str] | None) -> None:
        self.farm._spawn(name, [sys.executable, "-m", "nameko", "run", "--config", str(CONFIG),
                                f"services.{service}"], env)
        self.farm.modules[name] = service

    def _services_ready(self) -> bool:
        out = self.farm.ctl("list_queues", "-p", self.vhost, "name", "consumers", "--quiet")
        consumers = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
                     if len(line.split()) >= 2 and line.split()[1].isdigit()}
        return all(consumers.get(f"rpc-{service}", 0) >= (
            self.scheduler_count if service == "scheduler" else 1) for service in SERVICES)

    def add_worker(self) -> None:
        """A worker reaching the broker through a proxy of its own (see `cut_off_worker`); on
        a cluster, straight to its nodes (it fails over between them itself)."""
        if not isinstance(self.node, RabbitNode):
            self.farm.start_worker()
            self.workers.append(f"worker-{self.farm._counter}")
            return
        broker = f"127.0.0.1:{self.node.port}"
        proxy = self.proxies.enter_context(TcpProxy(broker))
        self.farm.start_worker(env={"CORRAL_AMQP_URI": self.farm.amqp_uri.replace(
            broker, proxy.address())})
        name = f"worker-{self.farm._counter}"
        self.workers.append(name)
        self.proxy_of[name] = proxy

    def submit(self, tasks: int, shortest: float = 0.1, longest: float = 1.0,
               **spec: Any) -> list[int]:
        """Ledger payloads in two jobs (`spec` adds to their specs: a priority, say), a third
        of them holding a licence seat; failures they do not cause themselves are retried. A
        tenth of the payloads are hostile."""
        durations = [round(self.random.uniform(shortest, longest), 2) for _ in range(tasks)]
        seated = max(1, tasks // 3)
        submitted = []
        for part, licences in ((durations[seated:], None), (durations[:seated], {LICENCE: 1})):
            job = self.farm.submit(
                [{"command": self._payload(seconds)} for seconds in part], name="chaos",
                retry={"max_attempts": 20}, max_host_failures=1000,
                **({"licences": licences} if licences else {}), **spec)
            self.jobs.append(int(job["id"]))
            submitted.append(int(job["id"]))
        return submitted

    def _payload(self, seconds: float) -> list[str]:
        """The ledger payload; half the time behind a wrapper shell, as renders often are, and
        now and then hostile (tests/chaos/payload.py).

        Behind a wrapper the payload is a grandchild of the worker: it must die with the worker
        like a direct child does.
        """
        argv = [sys.executable, str(PAYLOAD), str(self.ledger), str(seconds)]
        if self.random.random() < 0.1:
            argv.append(self.random.choice(HOSTILE))
        if self.random.random() < 0.5:
            # `wait $!`: the wrapper ends with the payload's status (a bare `wait` says 0).
            return ["sh", "-c", '"$@" & wait $!', "wrapper", *argv]
        return argv

    # --- faults ------------------------------------------------------------------------------

    def kill_service(self, service: str) -> None:
        self.farm.kill(service)
        time.sleep(self.random.uniform(0.2, 1.5))
        self.farm.start_service(service)

    def leading_scheduler(self) -> str | None:
        """The process name of the scheduler instance that leads now, as the instance answering
        says; None while none does."""
        leader = self.farm.rpc.scheduler.health()["leadership"]["leader"]
        if leader is None:
            return None
        pid = int(leader.split("/")[1])
        return next((name for name, process in self.farm.processes.items()
                     if self.farm.modules.get(name) == "scheduler" and process.pid == pid
                     and process.poll() is None), None)

    def kill_leading_scheduler(self) -> str:
        """kill -9 of the scheduler instance that leads (it is not started again); its name."""
        name = self.farm.wait_for(self.leading_scheduler, 30, "a scheduler to lead")
        self.farm.kill(name)
        return str(name)

    def kill_worker(self) -> None:
        name = self.random.choice(self.workers)
        self.workers.remove(name)
        self.farm.kill(name)
        self.add_worker()

    def cut_off_worker(self, seconds: float) -> None:
        """A worker's connection blackholed while the process lives (a partition): no byte
        moves either way for `seconds`, then everything waiting flows again."""
        proxy = self.proxy_of[self.random.choice([name for name in self.workers
                                                  if name in self.proxy_of])]
        proxy.blackhole()
        time.sleep(seconds)
        proxy.restore()

    def memory_hog(self) -> None:
        """A job whose task takes four times the memory it asked for: it fails, no worker dies."""
        job = self.farm.submit([{"command": [sys.executable, "-c", MEMORY_HOG]}],
                               name="chaos-hog", resources={"memory": "64M"},
                               retry={"max_attempts": 2})
        self.hostile_jobs.append(int(job["id"]))

    def kill_payload(self) -> None:
        """kill -9 of one payload that is running now (a render that crashes)."""
        running = [life for life in lives(read_ledger(self.ledger))
                   if not life.completed and time.time() - life.last_seen < 0.5]
        if running:
            try:
                os.kill(self.random.choice(running).pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart_broker(self) -> None:
        self.node.restart(down_for=self.random.uniform(0.5, 2.0))

    def close_connections(self) -> None:
        self.node.close_all_connections()

    def broker_outage(self, seconds: float) -> None:
        """The broker away for longer than a lease: nobody can renew, nobody can report."""
        self.node.restart(down_for=seconds)

    def stop_worker(self, seconds: float) -> None:
        """A worker frozen (SIGSTOP) past its lease, then woken: a stopped VM or a long GC."""
        name = self.random.choice(self.workers)
        process = self.farm.processes[name]
        process.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        process.send_signal(signal.SIGCONT)

    def publish(self, queue: str, body: bytes) -> None:
        """A message straight onto a queue, as a confused client or a replaying broker would."""
        with Connection(self.farm.amqp_uri) as connection:
            producer = connection.Producer()
            producer.publish(body, routing_key=queue, delivery_mode=2,
                             content_type="application/json")

    def poison(self) -> None:
        """Messages no healthy farm sends: each must be refused or dropped, starting nothing."""
        band = queue_name("cpu", "normal")
        entries = read_ledger(self.ledger)
        seen = lives(entries)
        running = [life for life in seen if not life.completed]
        finished = [life for life in seen if life.completed]
        self.publish(band, b"{not json")
        self.publish(band, json.dumps({"task_id": 10**9, "attempt": 1}).encode())
        self.publish(REPORTS_QUEUE, json.dumps({"task_id": 10**9, "lease_token": "forged",
                                                "exit_code": 0}).encode())
        for life in running[:2] + finished[:2]:
            # A duplicated claim of a running task, and a redelivery after the task finished.
            self.publish(band, json.dumps({"task_id": life.task, "attempt": life.attempt}).encode())

    def lock_task_table(self, seconds: float) -> None:
        """The scheduler's task table locked by someone else for longer than an RPC may take."""
        assert self.database_url is not None, "this fault needs the farm on PostgreSQL"
        engine = create_engine(self.database_url)
        try:
            with engine.begin() as connection:
                connection.execute(text("LOCK TABLE task IN ACCESS EXCLUSIVE MODE"))
                time.sleep(seconds)
        finally:
            engine.dispose()

    def fill_storage(self, seconds: float) -> None:
        """The storage root's disk full for `seconds`: logs cannot be written meanwhile."""
        assert self.storage_root is not None, "this fault needs the storage root on its own disk"
        filler = self.storage_root / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
            except OSError:
                pass  # full
        time.sleep(seconds)
        filler.unlink()

    def terminate_database_connections(self) -> None:
        """PostgreSQL ends every connection the services hold (a failover, an admin's kill)."""
        assert self.database_url is not None, "this fault needs the farm on PostgreSQL"
        name = self.database_url.rsplit("/", 1)[1]
        admin = create_engine(self.database_url.rsplit("/", 1)[0] + "/postgres",
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = :name AND pid <> pg_backend_pid()"),
                               {"name": name})
        admin.dispose()

    def inject(self, name: str, fault: Callable[[], None]) -> None:
        self.injected.append(name)
        print(f"chaos seed={self.seed}: {name} at {time.strftime('%H:%M:%S')}", flush=True)
        fault()

    # --- the outcome -------------------------------------------------------------------------

    def wait_for_jobs(self, timeout: float) -> None:
        for job_id in self.jobs + self.hostile_jobs:
            self.farm.wait_for_job(job_id, timeout)

    def misjudged_hogs(self) -> list[str]:
        """Memory hogs that did not fail of their memory, and workers that died of them."""
        wrong = []
        for job_id in self.hostile_jobs:
            for task in self.farm.rpc.scheduler.get_job(job_id)["tasks"]:
                full = self.farm.rpc.scheduler.get_task(task["id"])
                if full["state"] != "failed" or "out of memory" not in (full["reason"] or ""):
                    wrong.append(f"memory hog task {task['id']} ended {full['state']}: "
                                 f"{full['reason']}")
        dead = [name for name in self.workers if self.farm.processes[name].poll() is not None]
        wrong.extend(f"{name} died (exit {self.farm.processes[name].returncode})"
                     for name in dead)
        return wrong

    def records(self) -> dict[int, dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        for job_id in self.jobs:
            job = self.farm.rpc.scheduler.get_job(job_id)
            for task in job["tasks"]:
                full = self.farm.rpc.scheduler.get_task(task["id"])
                records[task["id"]] = {"state": full["state"], "attempts": full["attempts"]}
        return records

    def leaked(self, timeout: float = 15) -> list[str]:
        """Holdings still booked, and payload processes still running, once every task has ended
        (given a little time to come back)."""
        deadline = time.monotonic() + timeout
        while True:
            held = []
            for host in self.farm.rpc.resource_negotiator.list_hosts():
                reserved = host["reserved"]
                if reserved["cores"] or reserved["memory_mb"] or reserved["gpus"]:
                    held.append(f"host {host['host']} still has {reserved} reserved")
            for pool in self.farm.rpc.license.list_pools():
                if pool["in_use"]:
                    held.append(f"licence {pool['name']}: {pool['in_use']} seats still held")
            held.extend(self.payload_processes())
            if not held or time.monotonic() > deadline:
                return held
            time.sleep(0.5)

    def payload_processes(self) -> list[str]:
        """Processes of this run's jobs still alive (a daemon or child its attempt left)."""
        ours = {f"CORRAL_JOB_ID={job_id}".encode() for job_id in self.jobs + self.hostile_jobs}
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as environ:
                    variables = set(environ.read().split(b"\0"))
                with open(f"/proc/{name}/stat", "rb") as stat:
                    zombie = stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
            except OSError:
                continue
            if variables & ours and not zombie:
                found.append(f"payload process {name} still runs after its attempt ended")
        return found

    def verdict(self, timeout: float = 120) -> Verdict:
        self.wait_for_jobs(timeout)
        records = self.records()
        verdict = judge(read_ledger(self.ledger), records, self.leaked(),
                        faults=len(self.injected))
        verdict.unexpected.extend(self.misjudged_hogs())
        print(f"chaos seed={self.seed} faults={self.injected}: {verdict.totals()}", flush=True)
        return verdict

    def stop(self) -> None:
        self.farm.stop()
        self.proxies.close()
