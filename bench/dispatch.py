"""Dispatch-path benchmark: submit-to-start latency on an idle farm, and a burst's throughput.

Starts a real farm (registry, scheduler, two workers) on a fresh RabbitMQ vhost with SQLite in
a temporary folder, then prints one JSON object:

- sequential: 200 one-task jobs of `true`, one at a time. For each, the time from the submit
  call returning ("accepted") to the payload process having started, on the worker's clock
  (same machine), plus the submit call itself and submit-sent to started.
- burst: one job of 2,000 `true` tasks on two workers: tasks per second from the first start to
  the last end, and the largest gap between consecutive starts.
- with --resources and --licences: the sequential figure again with tasks that reserve resources,
  or lease a licence, and what each adds to the p50.

Run it with `.venv/bin/python -m bench.dispatch` (or `--sequential 50 --burst 500` for a quick
look). Targets (2-core machine, everything on it): p50 <= 5 ms, p99 <= 15 ms, >= 500 tasks/s,
no gap over 100 ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue

from tests.farm import AMQP_HOST, Farm, create_vhost, delete_vhost

RESERVED = {"cores": 1, "memory": "64M"}
LEASED = {"bench": 1}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values_ms, 0.5), 2),
            "p99_ms": round(percentile(values_ms, 0.99), 2),
            "mean_ms": round(statistics.fmean(values_ms), 2),
            "max_ms": round(max(values_ms), 2)}


class JobWatcher:
    """Waits for `job_finished` events instead of polling, so the benchmark adds no load."""

    def __init__(self, amqp_uri: str) -> None:
        self.connection = Connection(amqp_uri)
        exchange = Exchange("scheduler.events", type="topic", durable=True)
        self.queue = Queue(exclusive=True, auto_delete=True, exchange=exchange,
                           routing_key="job_finished")
        self.finished: set[int] = set()
        self.consumer = self.connection.Consumer([self.queue], callbacks=[self._on_event],
                                                 accept=["json"])
        self.consumer.consume()

    def _on_event(self, body: dict[str, Any], message: Any) -> None:
        self.finished.add(int(body["job_id"]))
        message.ack()

    def wait(self, farm: Farm, job_id: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while job_id not in self.finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} did not finish in {timeout}s")
            try:
                self.connection.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                pass
        return farm.rpc.scheduler.get_job(job_id, task_limit=10000)  # get_job's most

    def close(self) -> None:
        self.connection.release()


def sequential(farm: Farm, watcher: JobWatcher, count: int,
               **extra: Any) -> dict[str, Any]:
    """`extra` goes into every job spec: resources, licences."""
    accepted_to_start, call, sent_to_start = [], [], []
    for _ in range(count):
        sent = time.time()
        job = farm.rpc.scheduler.submit_job({"tasks": [{"command": ["true"]}], **extra})
        accepted = time.time()
        done = watcher.wait(farm, job["id"], 30)
        task = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])
        started = task["attempts"][-1]["process_started_at"]
        accepted_to_start.append((started - accepted) * 1000)
        sent_to_start.append((started - sent) * 1000)
        call.append((accepted - sent) * 1000)
    return {"tasks": count, "accepted_to_started": summary(accepted_to_start),
            "submit_call": summary(call), "sent_to_started": summary(sent_to_start)}


def burst(farm: Farm, watcher: JobWatcher, count: int) -> dict[str, Any]:
    submitted = time.time()
    job = farm.rpc.scheduler.submit_job({"tasks": [{"command": ["true"]}] * count})
    accepted = time.time()
    done = watcher.wait(farm, job["id"], 600)
    starts, ends = [], []
    for summary_row in done["tasks"]:
        attempts = farm.rpc.scheduler.get_task(summary_row["id"])["attempts"]
        starts.append(attempts[-1]["process_started_at"])
        ends.append(attempts[-1]["process_ended_at"])
    starts.sort()
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    span = max(ends) - starts[0]
    return {"tasks": count, "state": done["state"], "submit_call_ms":
            round((accepted - submitted) * 1000, 1),
            "tasks_per_second": round(count / span, 1),
            "largest_gap_between_starts_ms": round(max(gaps), 1),
            "gap_p99_ms": round(percentile(gaps, 0.99), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resources", action="store_true",
                        help="Also measure submit-to-start with a resource negotiator and tasks "
                             "that reserve 1 core / 64 MB, against the same without.")
    parser.add_argument("--licences", action="store_true",
                        help="Also measure submit-to-start with the license service and tasks "
                             "that lease one licence, against the same without.")
    args = parser.parse_args()
    vhost = create_vhost()
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory:
        farm = Farm(Path(directory), f"amqp://guest:guest@{AMQP_HOST}/{vhost}", vhost)
        # The shipped defaults, not the tests' short leases.
        farm.env.update({"CORRAL_LEASE_SECONDS": "20", "CORRAL_HEARTBEAT_SECONDS": "3",
                         "CORRAL_WORKER_LOST_AFTER": "10", "CORRAL_REDISPATCH_SECONDS": "30",
                         # The burst is one user's 2,000 tasks: past the default per-user limit.
                         "CORRAL_MAX_QUEUED_PER_USER": "100000"})
        try:
            farm.start(workers=0 if args.resources or args.licences else args.workers)
            if args.licences:
                farm.start_service("license")
                farm.rpc.license.set_pool("bench", 1000)
            if args.resources:
                farm.start_service("resource_negotiator")
            if args.resources or args.licences:
                for number in range(args.workers):
                    farm.start_worker("--cores", "64", "--memory", "64G",
                                      name=f"worker-{number + 1}")
            time.sleep(3)  # let the scheduler learn every worker
            watcher = JobWatcher(farm.amqp_uri)
            sequential(farm, watcher, 10)  # warm-up: first connections, SQLite pages
            report = {"machine_cores": os.cpu_count(), "workers": args.workers,
                      "sequential": sequential(farm, watcher, args.sequential)}
            baseline = report["sequential"]["accepted_to_started"]["p50_ms"]
            if args.resources:
                sequential(farm, watcher, 10, resources=RESERVED)  # warm-up of that path
                with_resources = sequential(farm, watcher, args.sequential, resources=RESERVED)
                report["sequential_with_resources"] = with_resources
                report["reservation_adds_p50_ms"] = round(
                    with_resources["accepted_to_started"]["p50_ms"] - baseline, 2)
            if args.licences:
                sequential(farm, watcher, 10, licences=LEASED)  # warm-up of that path
                with_licences = sequential(farm, watcher, args.sequential, licences=LEASED)
                report["sequential_with_licences"] = with_licences
                report["licence_adds_p50_ms"] = round(
                    with_licences["accepted_to_started"]["p50_ms"] - baseline, 2)
            report["burst"] = burst(farm, watcher, args.burst)
            watcher.close()
        finally:
            farm.stop()
            delete_vhost(vhost)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
