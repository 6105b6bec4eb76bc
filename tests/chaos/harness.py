"""The chaos harness: a farm of real processes on its own RabbitMQ node, work flowing, faults injected.

A run starts the services and workers on a vhost of a node the run owns, submits jobs whose
payloads write to a ledger (tests/chaos/payload.py), injects faults at random moments chosen
from a seed (printed, so a failing run can be replayed), waits for every accepted task to end,
and judges the ledger against the scheduler's records (tests/chaos/ledger.py).
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
from pathlib import Path
from typing import Any

from kombu import Connection
from sqlalchemy import create_engine, text

from shared.bands import REPORTS_QUEUE, queue_name
from tests.chaos.ledger import Verdict, judge, lives, read_ledger
from tests.farm import Farm
from tests.rabbit import RabbitNode

PAYLOAD = Path(__file__).resolve().parent / "payload.py"
SERVICES = ("registry", "scheduler", "resource_negotiator")


class ChaosRun:
    """One farm under faults: start it, put work through it, break things, judge the outcome."""

    def __init__(self, directory: Path, node: RabbitNode, seed: int, workers: int = 3,
                 database_url: str | None = None, schedulers: int = 1,
                 scheduler_env: Callable[[int], dict[str, str]] | None = None) -> None:
        self.directory = directory
        self.node = node
        self.seed = seed
        self.random = random.Random(seed)
        self.vhost = f"chaos-{uuid.uuid4().hex[:8]}"
        node.add_vhost(self.vhost)
        self.farm = Farm(directory, f"{node.uri}{self.vhost}", self.vhost, ctl=node.ctl)
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
        for service in SERVICES:
            self.farm.start_service(service, self.scheduler_env(1) if service == "scheduler"
                                    else None)
        for number in range(2, self.scheduler_count + 1):
            self.farm.start_service("scheduler", self.scheduler_env(number),
                                    name=f"scheduler-{number}")
        for _ in range(self.worker_count):
            self.add_worker()
        return self

    def add_worker(self) -> None:
        self.farm.start_worker()
        self.workers.append(f"worker-{self.farm._counter}")

    def submit(self, tasks: int, shortest: float = 0.1, longest: float = 1.0) -> int:
        """A job of `tasks` ledger payloads; failures it does not cause itself are retried."""
        durations = [round(self.random.uniform(shortest, longest), 2) for _ in range(tasks)]
        job = self.farm.submit(
            [{"command": self._payload(seconds)} for seconds in durations],
            name="chaos", retry={"max_attempts": 20}, max_host_failures=1000)
        self.jobs.append(job["id"])
        return int(job["id"])

    def _payload(self, seconds: float) -> list[str]:
        """The ledger payload; half the time behind a wrapper shell, as renders often are.

        Behind a wrapper the payload is a grandchild of the worker: it must die with the worker
        like a direct child does.
        """
        argv = [sys.executable, str(PAYLOAD), str(self.ledger), str(seconds)]
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
        for job_id in self.jobs:
            self.farm.wait_for_job(job_id, timeout)

    def records(self) -> dict[int, dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        for job_id in self.jobs:
            job = self.farm.rpc.scheduler.get_job(job_id)
            for task in job["tasks"]:
                full = self.farm.rpc.scheduler.get_task(task["id"])
                records[task["id"]] = {"state": full["state"], "attempts": full["attempts"]}
        return records

    def leaked(self, timeout: float = 15) -> list[str]:
        """Holdings still booked once every task has ended (given a little time to come back)."""
        deadline = time.monotonic() + timeout
        while True:
            held = []
            for host in self.farm.rpc.resource_negotiator.list_hosts():
                reserved = host["reserved"]
                if reserved["cores"] or reserved["memory_mb"] or reserved["gpus"]:
                    held.append(f"host {host['host']} still has {reserved} reserved")
            if not held or time.monotonic() > deadline:
                return held
            time.sleep(0.5)

    def verdict(self, timeout: float = 120) -> Verdict:
        self.wait_for_jobs(timeout)
        records = self.records()
        verdict = judge(read_ledger(self.ledger), records, self.leaked(),
                        faults=len(self.injected))
        print(f"chaos seed={self.seed} faults={self.injected}: {verdict.totals()}", flush=True)
        return verdict

    def stop(self) -> None:
        self.farm.stop()
