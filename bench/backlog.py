"""Scheduling with a deep backlog: acceptance time, urgent start latency, and per-decision cost.

Prints one JSON object:

- `accept`: seconds for `submit_job` of a 10,000-task job (plain tasks, and a layer of frames
  1-10000), through RPC to a running scheduler.
- `decision_cost_ms`: one release pass (plan_next_releases) measured in process on SQLite with
  1k, 10k and 100k tasks waiting: the curve should be flat.
- `urgent`: with 100,000 tasks waiting in the normal band and a worker kept for the high band,
  the accepted-to-started latency of a new high-priority task, against the same on an idle farm.
  Target: within 2x the idle latency.

Run: `.venv/bin/python -m bench.backlog` (about two minutes).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.dispatch import JobWatcher
from services.scheduler import store as ops
from services.scheduler.dispatch import IdleWorker
from shared.bands import parse_bands
from shared.db import Store, create_db_engine
from shared.spec import validate_job_spec
from tests.farm import AMQP_HOST, Farm, create_vhost, delete_vhost

BANDS = parse_bands({"low": [0, 9], "normal": [10, 99], "high": [100, 1000]})


def decision_cost(sizes: tuple[int, ...] = (1_000, 10_000, 100_000)) -> dict[str, float]:
    workers = [IdleWorker(f"w{i}", "cpu", frozenset({"low", "normal", "high"})) for i in range(4)]
    curve = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as directory:
            store = Store(create_db_engine(f"sqlite:///{directory}/s.db"),
                          ops.SchedulerTable.metadata, migrations="scheduler")
            store.migrate()
            for user in ("ana", "ben", "cho", "dev"):
                plan = validate_job_spec({"user": user, "tasks": [{"command": ["true"]}]
                                          * (size // 4)}, BANDS, max_env_bytes=32768,
                                         max_tasks=1_000_000)
                ops.submit_job(store, plan)
            samples = []
            for _ in range(30):
                started = time.perf_counter()
                ops.plan_next_releases(store, workers, ["high", "normal", "low"])
                samples.append((time.perf_counter() - started) * 1000)
            curve[str(size)] = round(statistics.median(samples), 2)
            store.dispose()
    return curve


def urgent_latency(farm: Farm, watcher: JobWatcher, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        job = farm.rpc.scheduler.submit_job({"priority": 500, "tasks": [{"command": ["true"]}]})
        accepted = time.time()
        done = watcher.wait(farm, job["id"], 60)
        attempt = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])["attempts"][-1]
        latencies.append((attempt["process_started_at"] - accepted) * 1000)
    return latencies


def main() -> int:
    vhost = create_vhost()
    report: dict[str, Any] = {"machine_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory:
        farm = Farm(Path(directory), f"amqp://guest:guest@{AMQP_HOST}/{vhost}", vhost)
        farm.env.update({"CORRAL_LEASE_SECONDS": "20", "CORRAL_HEARTBEAT_SECONDS": "3",
                         "CORRAL_MAX_QUEUED_PER_USER": "10000000"})
        try:
            farm.start(workers=0)
            farm.start_worker("--bands", "high", name="urgent-worker")
            time.sleep(3)
            watcher = JobWatcher(farm.amqp_uri)
            urgent_latency(farm, watcher, 5)  # warm-up
            idle = urgent_latency(farm, watcher, 30)
            accept = {}
            started = time.perf_counter()
            farm.rpc.scheduler.submit_job({"tasks": [{"command": ["true"]}] * 10_000})
            accept["tasks_10000_s"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            farm.rpc.scheduler.submit_job({"layers": [{"name": "render", "command": ["true"],
                                                       "frames": "1-10000"}]})
            accept["layer_frames_10000_s"] = round(time.perf_counter() - started, 3)
            for _ in range(8):
                farm.rpc.scheduler.submit_job({"tasks": [{"command": ["true"]}] * 10_000})
            waiting = farm.rpc.scheduler.list_jobs(page_size=1)["total"]
            busy = urgent_latency(farm, watcher, 30)
            watcher.close()
            report["accept"] = accept
            report["urgent"] = {
                "waiting_tasks": 100_000, "jobs": waiting,
                "idle_p50_ms": round(statistics.median(idle), 2),
                "with_backlog_p50_ms": round(statistics.median(busy), 2),
                "ratio": round(statistics.median(busy) / statistics.median(idle), 2)}
        finally:
            farm.stop()
            delete_vhost(vhost)
    report["decision_cost_ms"] = decision_cost()
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
