"""What is due for removal now: a finished job's logs, scratch and results once their retention
(from the job's end) is over, collected results a short while after collection, and records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared import storage
from shared.config import Settings
from shared.retention import Kind, delay_for

FILE_KINDS: tuple[Kind, ...] = ("logs", "scratch", "results")


@dataclass(frozen=True)
class Defaults:
    """The farm's retention, in seconds after a job ended (None: kept for good)."""

    logs: float | None
    scratch: float | None
    results: float | None
    records: float | None
    collected: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Defaults:
        return cls(settings.retention_logs_seconds, settings.retention_scratch_seconds,
                   settings.retention_results_seconds, settings.retention_records_seconds,
                   settings.retention_collected_seconds)

    def of(self, kind: Kind) -> float | None:
        value: float | None = getattr(self, kind)
        return value


@dataclass(frozen=True)
class JobRecord:
    """What the cleanup service knows of a finished job."""

    job_id: int
    user: str
    finished_at: float
    keep: bool = False
    retention: dict[str, float | str] | None = None
    removed: frozenset[str] = frozenset()
    record_purged: bool = False

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        return cls(row.job_id, row.user, row.finished_at, row.keep,
                   json.loads(row.retention) if row.retention else None,
                   frozenset(json.loads(row.removed)), row.record_purged)


@dataclass(frozen=True)
class Collected:
    task_id: int
    attempt: int
    job_id: int
    collected_at: float


@dataclass(frozen=True)
class Item:
    """One thing due for removal: a path under the storage root (or a job's record)."""

    kind: str  # logs, scratch, results, result (one collected result), records
    job_id: int
    path: str | None
    due_at: float
    why: str
    task_id: int | None = None
    attempt: int | None = None

    def as_dict(self, size: int = 0) -> dict[str, Any]:
        return {"kind": self.kind, "job_id": self.job_id, "path": self.path, "bytes": size,
                "due_at": self.due_at, "why": self.why, "task_id": self.task_id,
                "attempt": self.attempt}


def due(jobs: Iterable[JobRecord], collected: Iterable[Collected], defaults: Defaults,
        now: float) -> list[Item]:
    """Everything whose time has come, oldest due first. Jobs not listed (running, unknown)
    have nothing due: only a job known to have ended starts a clock."""
    items: list[Item] = []
    known: dict[int, JobRecord] = {}
    for job in jobs:
        known[job.job_id] = job
        for kind in FILE_KINDS:
            delay = delay_for(kind, defaults.of(kind), job.keep, job.retention)
            if kind in job.removed or delay is None or now < job.finished_at + delay:
                continue
            items.append(Item(kind, job.job_id, storage.job_path(kind, job.job_id),
                              job.finished_at + delay,
                              f"{kind} of job {job.job_id}, {_span(delay)} after it ended"))
        delay = delay_for("records", defaults.records, job.keep, job.retention)
        if not job.record_purged and delay is not None and now >= job.finished_at + delay:
            items.append(Item("records", job.job_id, None, job.finished_at + delay,
                              f"record of job {job.job_id}, {_span(delay)} after it ended"))
    for result in collected:
        owner = known.get(result.job_id)
        if owner is None or owner.keep or "results" in owner.removed:
            continue  # still running (retried) or unknown: its clock has not started
        if owner.retention and owner.retention.get("results") == "never":
            continue
        if now < result.collected_at + defaults.collected:
            continue
        items.append(Item("result", result.job_id,
                          storage.result_path(result.job_id, result.task_id, result.attempt),
                          result.collected_at + defaults.collected,
                          f"result of task {result.task_id} attempt {result.attempt}, "
                          f"{_span(defaults.collected)} after it was collected",
                          result.task_id, result.attempt))
    return sorted(items, key=lambda item: (item.due_at, item.job_id, item.kind))


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"
