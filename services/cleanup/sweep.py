"""One removal pass over the storage root, and the plan it follows, without nameko.

The service hands in how to ask the scheduler (is this job really over? purge these records)
so a pass is a plain function to test; every removal goes through shared.storage, which never
leaves the root.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.cleanup import store as store_ops
from services.cleanup.policy import Collected, Defaults, Item, JobRecord, due
from shared import storage
from shared.config import Settings
from shared.db import Store

log = logging.getLogger("corral.cleanup")

JobCheck = Callable[[int], "float | None | bool"]
"""Asks the scheduler whether a job is over: its finished_at, False while it is not over (or the
scheduler does not answer), True when the scheduler no longer has it (records purged)."""

Purge = Callable[[float, list[int]], list[int]]
"""Asks the scheduler to purge these jobs' records (finished before the time); the ids purged."""

ForgetResults = Callable[[list[int], list[int]], None]
"""Asks the scheduler to drop the stored results of these tasks, and of these jobs' tasks."""


@dataclass
class PassReport:
    """What one pass did, as the storage_cleaned event and `corral cleanup` show it."""

    removed: list[dict[str, Any]] = field(default_factory=list)
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    purged_jobs: list[int] = field(default_factory=list)
    forgotten_workers: list[str] = field(default_factory=list)
    forgotten_hosts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "bytes_freed": self.bytes_freed, "errors": self.errors,
                "left_alone": self.left_alone, "purged_jobs": self.purged_jobs,
                "forgotten_workers": self.forgotten_workers,
                "forgotten_hosts": self.forgotten_hosts, "at": time.time()}

    def anything(self) -> bool:
        return bool(self.removed or self.errors or self.purged_jobs or self.forgotten_workers
                    or self.forgotten_hosts)


class Sweeper:
    """Plans and runs removal passes for one storage root and one cleanup database."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.root = settings.storage_root
        self.defaults = Defaults.from_settings(settings)

    def now(self) -> float:
        with self.store.read() as session:
            return self.store.now(session)

    def due_items(self, now: float | None = None) -> list[Item]:
        jobs = [JobRecord.from_row(row) for row in store_ops.finished_jobs(self.store)]
        collected = [Collected(r.task_id, r.attempt, r.job_id, r.collected_at)
                     for r in store_ops.pending_results(self.store)]
        return due(jobs, collected, self.defaults, self.now() if now is None else now)

    def plan(self) -> dict[str, Any]:
        """What a pass would remove now, and the space it would free (nothing is touched)."""
        items = [item.as_dict(storage.size_of(self.root, item.path) if item.path else 0)
                 for item in self.due_items()
                 if item.path is None or os.path.lexists(self.root / item.path)]
        return {"items": items, "bytes": sum(item["bytes"] for item in items),
                "left_alone": storage.strays(self.root)}

    def run(self, is_over: JobCheck, purge: Purge,
            forget_results: ForgetResults | None = None) -> PassReport:
        """Remove what is due. A job the scheduler does not confirm as over is skipped."""
        results_of_tasks: list[int] = []
        results_of_jobs: list[int] = []
        report = PassReport(left_alone=storage.strays(self.root))
        for stray in report.left_alone:
            log.info("left alone under the storage root (not Corral's): %s", stray)
        now = self.now()
        confirmed: dict[int, bool] = {}
        records: list[Item] = []
        for item in self.due_items(now):
            if item.kind == "records":
                records.append(item)
                continue
            if item.job_id not in confirmed:
                confirmed[item.job_id] = self._confirm(item.job_id, is_over)
            if not confirmed[item.job_id]:
                continue
            assert item.path is not None
            removal = storage.remove(self.root, item.path)
            report.errors.extend(removal.errors)
            report.left_alone.extend(removal.left_alone)
            for problem in removal.errors + removal.left_alone:
                log.warning("could not remove %s now: %s (trying again next pass)", item.path,
                            problem)
            if removal.errors:
                continue
            if removal.files or removal.links or removal.directories:  # not already gone
                report.removed.append({**item.as_dict(removal.bytes_freed),
                                       "files": removal.files + removal.links})
                report.bytes_freed += removal.bytes_freed
            if item.kind == "result":
                assert item.task_id is not None and item.attempt is not None
                store_ops.mark_result_removed(self.store, item.task_id, item.attempt, now)
                results_of_tasks.append(item.task_id)
            else:
                store_ops.mark_removed(self.store, item.job_id, item.kind)
                if item.kind == "results":
                    results_of_jobs.append(item.job_id)
        if forget_results is not None and (results_of_tasks or results_of_jobs):
            forget_results(results_of_tasks, results_of_jobs)
        if records:
            before = max(item.due_at for item in records)
            ids = [item.job_id for item in records]
            purged = purge(before + 1.0, ids)
            store_ops.mark_records_purged(self.store, purged)
            report.purged_jobs = purged
        return report

    def _confirm(self, job_id: int, is_over: JobCheck) -> bool:
        answer = is_over(job_id)
        if answer is True:
            return True  # the scheduler has forgotten it: nothing can still be writing there
        if answer is False or answer is None:
            return False
        mine = {row.job_id: row for row in store_ops.finished_jobs(self.store)}.get(job_id)
        if mine is not None and float(answer) > mine.finished_at + 1e-6:
            # It was retried and ended again later: its clock starts again from then.
            log.info("job %s ended again at %s: its retention starts over", job_id, answer)
            return False
        return True

    def usage(self, users: dict[int, str]) -> dict[str, Any]:
        """Disk use per job (each kind) and per user, read from the storage root."""
        jobs: dict[int, dict[str, Any]] = {}
        for kind, job_id in storage.job_folders(self.root):
            entry = jobs.setdefault(job_id, {"job_id": job_id, "user": users.get(job_id),
                                             "logs": 0, "results": 0, "scratch": 0, "bytes": 0})
            size = storage.size_of(self.root, storage.job_path(kind, job_id))
            entry[kind] += size
            entry["bytes"] += size
        per_user: dict[str, int] = {}
        for entry in jobs.values():
            name = entry["user"] or "(unknown)"
            per_user[name] = per_user.get(name, 0) + entry["bytes"]
        free, reason = storage.shortage(self.root, self.settings.storage_min_free_bytes)
        return {"jobs": sorted(jobs.values(), key=lambda e: -e["bytes"]),
                "users": [{"user": user, "bytes": size} for user, size
                          in sorted(per_user.items(), key=lambda pair: -pair[1])],
                "bytes": sum(entry["bytes"] for entry in jobs.values()),
                "free_bytes": free, "low": reason is not None, "reason": reason}
