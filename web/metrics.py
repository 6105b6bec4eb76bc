"""/metrics for Prometheus: every figure is read from the services at scrape time.

Nothing is counted inside the monitor, so any number of gunicorn workers answer alike (no
multiprocess directory to share). Counters come from the scheduler's own records (attempts by
how they ended), so they survive monitor restarts; a service that does not answer leaves its
figures out and sets `corral_up{service}` to 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from web.farm import call_or_none

metrics = Blueprint("metrics", __name__)

TASK_STATES = ("waiting", "queued", "paused", "dispatched", "running", "done", "failed",
               "cancelled")
WORKER_STATES = ("idle", "busy", "draining", "drained", "disabled", "lost", "left")
OUTCOMES = ("done", "failed", "lost", "cancelled", "handed_back")


class FarmCollector(Collector):
    """One scrape: asks the scheduler, the registry and the license service once each."""

    def collect(self) -> Iterator[Metric]:
        stats, stats_error = call_or_none("scheduler", "farm_stats", minutes=1, histogram=True)
        overview, overview_error = call_or_none("registry", "farm_overview")
        pools, pools_error = call_or_none("license", "list_pools")
        up = GaugeMetricFamily("corral_up", "1 when the service answered this scrape",
                               labels=["service"])
        for service, error in (("scheduler", stats_error), ("registry", overview_error),
                               ("license", pools_error)):
            up.add_metric([service], 0.0 if error else 1.0)
        yield up
        if stats is not None:
            yield from _scheduler(stats)
        if overview is not None:
            yield from _registry(overview)
        if pools is not None:
            yield from _licences(pools)


def _scheduler(stats: dict[str, Any]) -> Iterator[Metric]:
    tasks = GaugeMetricFamily("corral_tasks", "Tasks by state", labels=["state"])
    for state in sorted(set(TASK_STATES) | set(stats["tasks"])):
        tasks.add_metric([state], float(stats["tasks"].get(state, 0)))
    yield tasks
    attempts = stats["attempts"]
    finished = CounterMetricFamily("corral_tasks_finished", "Task attempts ended, by outcome",
                                   labels=["outcome"])
    for outcome in sorted(set(OUTCOMES) | set(attempts)):
        finished.add_metric([outcome], float(attempts.get(outcome, 0)))
    yield finished
    yield CounterMetricFamily("corral_leases_expired",
                              "Attempts lost because their worker stopped renewing the lease",
                              value=float(attempts.get("lost", 0)))
    durations = stats.get("durations")
    if durations:
        buckets = [(f"{bound:g}", float(count)) for bound, count in durations["buckets"]]
        buckets.append(("+Inf", float(durations["count"])))
        yield HistogramMetricFamily("corral_task_duration_seconds",
                                    "Run time of finished task attempts", buckets=buckets,
                                    sum_value=float(durations["sum"]))


def _registry(overview: dict[str, Any]) -> Iterator[Metric]:
    workers = GaugeMetricFamily("corral_workers", "Workers by state", labels=["state"])
    for state in sorted(set(WORKER_STATES) | set(overview["workers"])):
        workers.add_metric([state], float(overview["workers"].get(state, 0)))
    yield workers
    ready = GaugeMetricFamily("corral_queue_messages_ready",
                              "Task messages waiting in each pool-and-band queue",
                              labels=["pool", "band"])
    for queue in overview["queues"]:
        ready.add_metric([queue["pool"], queue["band"]], float(queue["messages"]))
    yield ready
    yield GaugeMetricFamily("corral_finish_reports_dead",
                            "Finish reports set aside in corral.reports.dead",
                            value=float(overview["reports"]["dead"]))


def _licences(pools: list[dict[str, Any]]) -> Iterator[Metric]:
    tokens = GaugeMetricFamily("corral_licence_tokens",
                               "Licence tokens by pool and who holds them (corral, external, free)",
                               labels=["pool", "holder"])
    for pool in pools:
        for holder, key in (("corral", "in_use"), ("external", "external_in_use"),
                            ("free", "free")):
            tokens.add_metric([pool["name"], holder], float(pool.get(key) or 0))
    yield tokens


@metrics.get("/metrics")
def scrape() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector())
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
