"""Fleet benchmark: the registry and scheduler with 100, 300 and 1,000 simulated workers (issue 12).

Starts the registry and scheduler on a fresh RabbitMQ vhost with SQLite in a temporary folder and
the shipped timings (3 s heartbeats, 20 s leases, lost after 10 s), then for each fleet size runs
that many simulated workers in one separate process (bench.fleet_sim: the worker's own link and
RPC code, asyncio, no payload processes) while a stream of one-task `true` jobs flows to them,
and measures over a steady-state window:

- the CPU the registry and the scheduler use (psutil on their processes), in % of one core, and
  how long the registry was ready to run but waited for a CPU the rest of the machine held;
- workers wrongly declared lost: `worker_lost` events the registry sent for a live simulated
  worker (none should come);
- `registry.farm_overview` (what the monitor's overview and `corral status` ask for) from the
  monitor's own RPC client, every half second: p50/p95.

Run it with `.venv/bin/python -m bench.fleet` (about four minutes; `--levels 100 --measure 15`
for a quick look). Targets: registry + scheduler under 25 % of one core, nobody lost, the
overview's p95 under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from kombu import Connection, Exchange, Queue

from bench.dispatch import percentile
from shared import events
from shared.identity import Role, issue_token
from tests.farm import AMQP_HOST, ROOT, Farm, create_vhost, delete_vhost
from web.rpc import RpcClient, ServiceUnavailable

SHIPPED_TIMINGS = {"CORRAL_HEARTBEAT_SECONDS": "3", "CORRAL_LEASE_SECONDS": "20",
                   "CORRAL_WORKER_LOST_AFTER": "10", "CORRAL_REDISPATCH_SECONDS": "30",
                   "CORRAL_RPC_TIMEOUT": "10"}
POOL = "sim"
START_PATIENCE = 180.0
"""Seconds a fleet may take to register before its size counts as not reached."""


class FleetDidNotStart(Exception):
    """The registry did not take every simulated worker's registration in time."""


class LostWatcher:
    """Counts the registry's `worker_lost` events, by worker id."""

    def __init__(self, amqp_uri: str) -> None:
        self.connection = Connection(amqp_uri)
        self.queue = Queue(f"bench-fleet-lost-{uuid.uuid4().hex[:8]}",
                           Exchange("registry.events", type="topic", durable=True),
                           routing_key=events.WORKER_LOST, exclusive=True, auto_delete=True,
                           channel=self.connection.channel())
        self.queue.declare()

    def lost(self) -> list[str]:
        """The workers declared lost since the last call."""
        found = []
        while (message := self.queue.get(no_ack=True)) is not None:
            found.append(str(json.loads(message.body)["worker_id"]))
        return found


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def waited_seconds(process: psutil.Process) -> float:
    """How long the process's main thread has been ready to run but waiting for a CPU (Linux's
    schedstat): what the rest of the machine took from it."""
    with open(f"/proc/{process.pid}/schedstat") as stat:
        return int(stat.read().split()[1]) / 1e9


class Fleet:
    """One bench.fleet_sim process of `size` simulated workers."""

    def __init__(self, farm: Farm, size: int, run_seconds: float) -> None:
        self.prefix = f"sim{size}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet_sim", "--workers", str(size), "--prefix",
             self.prefix, "--pool", POOL, "--run-seconds", str(run_seconds)],
            env=farm.env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        started = time.monotonic()
        # Every worker has registered when it says so; a registry too slow for that is a figure.
        ready, _, _ = select.select([self.process.stdout], [], [], START_PATIENCE)
        line = self.process.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.process.kill()
            self.process.wait()
            raise FleetDidNotStart(f"{size} simulated workers were not all registered after "
                                   f"{time.monotonic() - started:.0f} s")
        self.psutil = psutil.Process(self.process.pid)

    def stop(self) -> dict[str, Any]:
        """Every simulated worker leaves the registry; what they ran."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=120)
        return dict(json.loads(out.strip().splitlines()[-1])) if out.strip() else {}


def poll_overview(rpc: RpcClient, token: str, every: float, stop: threading.Event,
                  samples: list[float]) -> None:
    """Ask for the farm overview every `every` seconds, as the monitor's page does, until `stop`."""
    while not stop.is_set():
        asked = time.perf_counter()
        try:
            rpc.call("registry", "farm_overview", token=token)
        except ServiceUnavailable:
            pass  # no answer within the client's timeout: counted as that long
        took = time.perf_counter() - asked
        samples.append(took * 1000)
        stop.wait(max(0.0, every - took))


def measure(farm: Farm, rpc: RpcClient, tokens: dict[str, str], fleet: Fleet, seconds: float,
            task_rate: int) -> dict[str, Any]:
    """Registry and scheduler CPU, the overview's latency and the jobs submitted, over `seconds`
    of steady state: every second a job of `task_rate` tasks, every half second (from a thread
    of its own, so a slow answer delays no submit) an overview."""
    services = {name: psutil.Process(farm.processes[name].pid) for name in ("registry", "scheduler")}
    before = {name: cpu_seconds(process) for name, process in services.items()}
    waited_before = {name: waited_seconds(process) for name, process in services.items()}
    fleet_before = cpu_seconds(fleet.psutil)
    overview_ms: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_overview,
                              args=(rpc, tokens["viewer"], 0.5, stop, overview_ms))
    jobs: list[int] = []
    sent = 0
    started = time.monotonic()
    poller.start()
    try:
        while (now := time.monotonic()) < started + seconds:
            if task_rate:
                sent += 1
                try:
                    job = rpc.call("scheduler", "submit_job", token=tokens["submit"], spec={
                        "name": f"{fleet.prefix}-{sent}", "user": "bench", "pool": POOL,
                        "tasks": [{"command": ["true"]} for _ in range(task_rate)]})
                    jobs.append(int(job["id"]))
                except ServiceUnavailable:
                    pass  # the scheduler did not answer in time: one job fewer
            time.sleep(max(0.0, started + sent - time.monotonic()) if task_rate
                       else max(0.0, started + seconds - now))
        elapsed = time.monotonic() - started
        cpu = {name: 100 * (cpu_seconds(process) - before[name]) / elapsed
               for name, process in services.items()}
        fleet_cpu = 100 * (cpu_seconds(fleet.psutil) - fleet_before) / elapsed
        waited = {name: 100 * (waited_seconds(process) - waited_before[name]) / elapsed
                  for name, process in services.items()}
    finally:
        stop.set()
        poller.join()
    return {"registry_cpu_pct": round(cpu["registry"], 1),
            "scheduler_cpu_pct": round(cpu["scheduler"], 1),
            "together_cpu_pct": round(cpu["registry"] + cpu["scheduler"], 1),
            "fleet_cpu_pct": round(fleet_cpu, 1),
            "registry_waited_pct": round(waited["registry"], 1),
            "scheduler_waited_pct": round(waited["scheduler"], 1),
            "overview_p50_ms": round(percentile(overview_ms, 0.5), 1),
            "overview_p95_ms": round(percentile(overview_ms, 0.95), 1),
            "overview_calls": len(overview_ms), "jobs": jobs,
            "load_average": round(os.getloadavg()[0], 1)}


def unfinished(rpc: RpcClient, token: str, jobs: list[int], wait: float) -> int:
    """How many of `jobs` are still not done after waiting up to `wait` seconds."""
    deadline = time.monotonic() + wait
    left = list(jobs)
    while left and time.monotonic() < deadline:
        try:
            left = [job for job in left if rpc.call("scheduler", "get_job", token=token,
                                                     job_id=job, task_limit=1)["state"] != "done"]
        except ServiceUnavailable:
            pass  # ask again
        if left:
            time.sleep(0.5)
    return len(left)


def run_level(farm: Farm, rpc: RpcClient, tokens: dict[str, str], watcher: LostWatcher,
              size: int, args: argparse.Namespace) -> dict[str, Any]:
    watcher.lost()  # whatever came before this fleet is not its business
    try:
        fleet = Fleet(farm, size, args.run_seconds)
    except FleetDidNotStart as exc:
        return {"workers": size, "not_reached": str(exc)}
    try:
        time.sleep(args.warmup)  # registration's burst is over; heartbeats are spread out
        # No workers, no tasks: they would only wait, and run in the next fleet's window.
        figures = measure(farm, rpc, tokens, fleet, args.measure, args.task_rate if size else 0)
        lost = [worker for worker in watcher.lost() if worker.startswith(fleet.prefix + "-")]
        left = unfinished(rpc, tokens["submit"], figures.pop("jobs"), 30)
    finally:
        ran = fleet.stop()
    return {"workers": size, **figures, "wrongly_lost": len(lost), "jobs_unfinished": left,
            "tasks_run": ran.get("tasks_run")}


def table(rows: list[dict[str, Any]]) -> str:
    columns = [("workers", "workers"), ("registry %", "registry_cpu_pct"),
               ("scheduler %", "scheduler_cpu_pct"), ("together %", "together_cpu_pct"),
               ("lost", "wrongly_lost"), ("overview p50 ms", "overview_p50_ms"),
               ("overview p95 ms", "overview_p95_ms"), ("fleet %", "fleet_cpu_pct"),
               ("registry waited %", "registry_waited_pct"), ("load", "load_average")]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(key, "-")) for _, key in columns) + " |"
              + (f" {row['not_reached']}" if "not_reached" in row else "") for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="100,300,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--warmup", type=float, default=8.0,
                        help="seconds after the fleet registered before measuring")
    parser.add_argument("--measure", type=float, default=30.0, help="seconds measured per size")
    parser.add_argument("--task-rate", type=int, default=5, help="`true` tasks submitted a second")
    parser.add_argument("--run-seconds", type=float, default=0.0,
                        help="how long each simulated task holds its worker, renewing its lease")
    args = parser.parse_args(argv)
    vhost = create_vhost()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        farm = Farm(Path(directory), f"amqp://guest:guest@{AMQP_HOST}/{vhost}", vhost)
        farm.env.update(SHIPPED_TIMINGS)
        try:
            farm.start_service("registry")
            farm.start_service("scheduler")
            tokens = {"viewer": issue_token(farm.credentials.secret, "bench", Role.VIEWER),
                      "submit": farm.credentials.admin_token}
            rpc = RpcClient(farm.amqp_uri, timeout=30)
            watcher = LostWatcher(farm.amqp_uri)
            for size in (int(level) for level in args.levels.split(",")):
                rows.append(run_level(farm, rpc, tokens, watcher, size, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            rpc.close()
        finally:
            farm.stop()
            delete_vhost(vhost)
    print(json.dumps({"task_rate_per_s": args.task_rate, "run_seconds": args.run_seconds,
                      "measured_s": args.measure, "levels": rows}, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
