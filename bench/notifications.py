"""What notifications cost the dispatch path: one-task jobs with no notify, with a webhook that
answers at once, and with one that never answers.

Prints one JSON object: for each case, the accepted-to-started latency of a stream of one-task
jobs (p50 and p99, ms) and how many of its webhooks were delivered by the end. With the silent
receiver every delivery holds a sender green thread for the try timeout (60 s here) and the
rest wait in the outbox: the latencies should match the no-notify case.

Run: `.venv/bin/python -m bench.notifications [--jobs 100]` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.dispatch import JobWatcher
from tests.farm import AMQP_HOST, Farm, create_vhost, delete_vhost
from tests.receivers import WebhookReceiver


def stream(farm: Farm, watcher: JobWatcher, jobs: int,
           notify: dict[str, Any] | None) -> tuple[list[float], list[int]]:
    latencies, ids = [], []
    for _ in range(jobs):
        spec: dict[str, Any] = {"tasks": [{"command": ["true"]}]}
        if notify is not None:
            spec["notify"] = notify
        job = farm.rpc.scheduler.submit_job(spec)
        accepted = time.time()
        done = watcher.wait(farm, job["id"], 60)
        attempt = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])["attempts"][-1]
        latencies.append((attempt["process_started_at"] - accepted) * 1000)
        ids.append(job["id"])
    return latencies, ids


def figures(farm: Farm, latencies: list[float], ids: list[int]) -> dict[str, Any]:
    delivered = sum(1 for job_id in ids
                    for n in farm.rpc.scheduler.get_job(job_id, task_limit=0)["notifications"]
                    if n["state"] == "delivered")
    ordered = sorted(latencies)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "delivered": delivered}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    jobs = parser.parse_args().jobs
    vhost = create_vhost()
    report: dict[str, Any] = {"machine_cores": os.cpu_count(), "jobs_per_case": jobs}
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as directory, \
            WebhookReceiver([200]) as answering, WebhookReceiver([None]) as silent:
        farm = Farm(Path(directory), f"amqp://guest:guest@{AMQP_HOST}/{vhost}", vhost)
        farm.env.update({"CORRAL_LEASE_SECONDS": "20", "CORRAL_HEARTBEAT_SECONDS": "3",
                         "CORRAL_NOTIFY_SECRET": "bench", "CORRAL_NOTIFY_TIMEOUT": "60"})
        try:
            farm.start(workers=1)
            time.sleep(3)
            watcher = JobWatcher(farm.amqp_uri)
            stream(farm, watcher, 5, None)  # warm-up
            for case, notify in (("no_notify", None),
                                 ("answering_webhook", {"webhooks": [answering.url]}),
                                 ("silent_webhook", {"webhooks": [silent.url]})):
                latencies, ids = stream(farm, watcher, jobs, notify)
                time.sleep(1)  # the last deliveries' tries
                report[case] = figures(farm, latencies, ids)
            watcher.close()
        finally:
            farm.stop()
            delete_vhost(vhost)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
