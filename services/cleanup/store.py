"""The cleanup service's own tables (finished jobs and their retention, collected results) and
their changes, without nameko; it never touches another service's tables."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel, col

from shared.db import Store
from shared.retention import JobFinished, ResultCollected


class CleanupTable(SQLModel, registry=registry()):
    """Base of the cleanup service's tables: their own metadata, in its own database."""


class FinishedJob(CleanupTable, table=True):
    """A job that ended, and what its spec says to keep: the clock of every removal starts here."""

    __tablename__ = "finished_job"

    job_id: int = Field(primary_key=True)
    user: str = Field(index=True)
    state: str
    finished_at: float = Field(index=True)
    keep: bool = False
    retention: str | None = None  # JSON {kind: seconds or "never"}
    removed: str = "[]"  # JSON list of the kinds whose files are gone
    record_purged: bool = False


class CollectedResult(CleanupTable, table=True):
    """A task attempt's result its owner has read: removed a short while after."""

    __tablename__ = "collected_result"

    task_id: int = Field(primary_key=True)
    attempt: int = Field(primary_key=True)
    job_id: int = Field(index=True)
    collected_at: float
    removed_at: float | None = None


def job_finished(store: Store, event: JobFinished, heard_at: float) -> None:
    """Record (or update: a retried job ends again later) when a job ended."""
    with store.write() as session:
        row = session.get(FinishedJob, event.job_id)
        finished_at = event.finished_at if event.finished_at is not None else heard_at
        retention = json.dumps(event.retention, sort_keys=True) if event.retention else None
        if row is None:
            session.add(FinishedJob(job_id=event.job_id, user=event.user, state=event.state,
                                    finished_at=finished_at, keep=event.keep,
                                    retention=retention))
            return
        if finished_at >= row.finished_at:  # an older, redelivered event changes nothing
            row.state, row.finished_at, row.keep = event.state, finished_at, event.keep
            row.retention, row.removed = retention, "[]"


def job_restarted(store: Store, job_id: int) -> bool:
    """A finished job runs again (retried): nothing of it is removed until it ends again."""
    with store.write() as session:
        row = session.get(FinishedJob, job_id)
        if row is None:
            return False
        session.delete(row)
        return True


def result_collected(store: Store, event: ResultCollected) -> None:
    """Remember the first time a result was collected (later reads do not extend its life)."""
    with store.write() as session:
        if session.get(CollectedResult, (event.task_id, event.attempt)) is None:
            session.add(CollectedResult(task_id=event.task_id, attempt=event.attempt,
                                        job_id=event.job_id, collected_at=event.collected_at))


def finished_jobs(store: Store) -> list[FinishedJob]:
    with store.read() as session:
        rows = session.scalars(select(FinishedJob).order_by(col(FinishedJob.job_id))).all()
        session.expunge_all()
        return list(rows)


def pending_results(store: Store) -> list[CollectedResult]:
    with store.read() as session:
        rows = session.scalars(select(CollectedResult).where(
            col(CollectedResult.removed_at).is_(None))).all()
        session.expunge_all()
        return list(rows)


def mark_removed(store: Store, job_id: int, kind: str) -> None:
    with store.write() as session:
        row = session.get(FinishedJob, job_id)
        if row is not None:
            kinds = set(json.loads(row.removed)) | {kind}
            row.removed = json.dumps(sorted(kinds))


def mark_result_removed(store: Store, task_id: int, attempt: int, when: float) -> None:
    with store.write() as session:
        row = session.get(CollectedResult, (task_id, attempt))
        if row is not None:
            row.removed_at = when


def mark_records_purged(store: Store, job_ids: Iterable[int]) -> None:
    with store.write() as session:
        for job_id in job_ids:
            row = session.get(FinishedJob, job_id)
            if row is not None:
                row.record_purged = True


def users_of(store: Store, job_ids: Iterable[int]) -> dict[int, str]:
    ids = list(job_ids)
    with store.read() as session:
        rows = session.execute(select(col(FinishedJob.job_id), col(FinishedJob.user)).where(
            col(FinishedJob.job_id).in_(ids))).all()
    return {job_id: user for job_id, user in rows}


def job_dict(row: FinishedJob) -> dict[str, Any]:
    data = row.model_dump(mode="json")
    data["retention"] = json.loads(row.retention) if row.retention else None
    data["removed"] = json.loads(row.removed)
    return data
