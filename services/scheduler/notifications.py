"""The scheduler's notification outbox: one row per delivery, written with the job's end.

A job's end (or its first task failing for good) adds a row for every target that asked to hear
of it, inside the very transaction that records the end: if that commits, the delivery exists;
if it rolls back, neither does. The sender (services.scheduler.notify_sender) claims due rows,
tries them, and records each outcome here. A crash after a receiver got a POST but before the
outcome was recorded makes the sender try again: delivery is at least once, and every try of
one delivery carries the same id (X-Corral-Delivery) so a receiver can drop repeats.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Index, delete, select
from sqlalchemy.orm import Session
from sqlmodel import Field, col

from services.scheduler.tables import SchedulerTable
from shared.db import Store
from shared.notify import shown_address, wanted

if TYPE_CHECKING:
    from services.scheduler.store import Job

MAX_ERROR_CHARS = 500


class DeliveryState(StrEnum):
    PENDING = "pending"      # not delivered yet: due at next_try_at
    DELIVERED = "delivered"  # the receiver answered 2xx (or the SMTP server took the mail)
    FAILED = "failed"        # given up: still failing give_up_seconds after the event


class Notification(SchedulerTable, table=True):
    """One delivery of one event of one job to one target, and how it went."""

    # The sender asks for pending rows by next_try_at every pass: this index answers it.
    __table_args__ = (Index("ix_notification_due", "state", "next_try_at"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(index=True, foreign_key="job.id")
    event: str                # done, failed, cancelled or first_failed_task
    kind: str                 # webhook or email
    address: str              # the URL or the e-mail address
    source: str               # job (its spec's notify) or studio (a hook from the config)
    facts: str                # JSON: the document's content, fixed when the event happened
    state: str = DeliveryState.PENDING
    tries: int = 0
    created_at: float
    next_try_at: float
    last_tried_at: float | None = None
    delivered_at: float | None = None
    last_status: int | None = None  # the receiver's HTTP status (SMTP: its reply code)
    last_error: str | None = None


def targets_of(job: Job) -> list[dict[str, Any]]:
    return list(json.loads(job.notify)) if job.notify else []


def _facts(job: Job, counts: dict[str, int], now: float,
           task: dict[str, Any] | None = None) -> dict[str, Any]:
    started, finished = job.started_at, job.finished_at
    return {
        "job_id": job.id, "name": job.name, "user": job.user, "state": job.state,
        "counts": dict(counts), "task_count": job.task_count, "created_at": job.created_at,
        "started_at": started, "finished_at": finished,
        "wait_seconds": round(started - job.created_at, 3) if started is not None else None,
        "run_seconds": (round(finished - started, 3)
                        if started is not None and finished is not None else None),
        "total_seconds": round((finished if finished is not None else now) - job.created_at, 3),
        "task": task}


def _add(session: Session, job: Job, event: str, facts: dict[str, Any], now: float) -> int:
    added = 0
    assert job.id is not None
    for target in wanted(targets_of(job), event):
        session.add(Notification(job_id=job.id, event=event, kind=target["kind"],
                                 address=target["address"], source=target["source"],
                                 facts=json.dumps({**facts, "event": event}),
                                 created_at=now, next_try_at=now))
        added += 1
    return added


def job_ended(session: Session, job: Job, counts: dict[str, int], now: float) -> int:
    """Add the deliveries of a job's end (its state says which), in the caller's transaction."""
    return _add(session, job, str(job.state), _facts(job, counts, now), now)


def first_task_failed(session: Session, job: Job, counts: dict[str, int], task: dict[str, Any],
                      now: float) -> int:
    """Add the deliveries of the job's first task failing for good (`task`: id, name, exit_code,
    reason)."""
    return _add(session, job, "first_failed_task", _facts(job, counts, now, task), now)


def next_pause(tries: int, backoff_seconds: float, backoff_max_seconds: float) -> float:
    """Seconds before the next try after `tries` failed ones: doubling from backoff_seconds."""
    return float(min(backoff_max_seconds, backoff_seconds * 2 ** max(0, tries - 1)))


def claim_due(store: Store, most: int, hold_seconds: float) -> list[dict[str, Any]]:
    """Up to `most` deliveries that are due, each counted as one more try and held for
    `hold_seconds` (another pass, or another scheduler, leaves them alone meanwhile; a sender
    that dies mid-try lets them come due again once that is over)."""
    with store.write() as session:
        now = store.now(session)
        rows = session.scalars(
            select(Notification).where(col(Notification.state) == DeliveryState.PENDING,
                                       col(Notification.next_try_at) <= now)
            .order_by(col(Notification.next_try_at)).limit(most)
            .with_for_update(skip_locked=True)).all()
        claimed = []
        for row in rows:
            row.tries += 1
            row.last_tried_at = now
            row.next_try_at = now + hold_seconds
            claimed.append({"id": row.id, "job_id": row.job_id, "event": row.event,
                            "kind": row.kind, "address": row.address, "source": row.source,
                            "facts": json.loads(row.facts), "tries": row.tries,
                            "created_at": row.created_at})
    return claimed


def record_delivered(store: Store, delivery_id: int, status: int | None) -> None:
    with store.write() as session:
        row = session.get(Notification, delivery_id)
        if row is None:
            return  # its job was purged meanwhile
        row.state = DeliveryState.DELIVERED
        row.delivered_at = store.now(session)
        row.last_status = status
        row.last_error = None


def record_failure(store: Store, delivery_id: int, error: str, status: int | None, *,
                   backoff_seconds: float, backoff_max_seconds: float,
                   give_up_seconds: float) -> str:
    """Note a failed try: due again after the backoff, or given up past give_up_seconds. Returns
    the delivery's state."""
    with store.write() as session:
        row = session.get(Notification, delivery_id)
        if row is None:
            return DeliveryState.FAILED
        now = store.now(session)
        row.last_status = status
        row.last_error = error[:MAX_ERROR_CHARS]
        due = now + next_pause(row.tries, backoff_seconds, backoff_max_seconds)
        if due > row.created_at + give_up_seconds:
            row.state = DeliveryState.FAILED
        else:
            row.next_try_at = due
        return str(row.state)


def deliveries_of_job(session: Session, job_id: int) -> list[dict[str, Any]]:
    """A job's deliveries as people may see them (a webhook's path and query hidden)."""
    rows = session.scalars(select(Notification).where(col(Notification.job_id) == job_id)
                           .order_by(col(Notification.id))).all()
    return [{"id": row.id, "event": row.event, "kind": row.kind,
             "target": shown_address(row.kind, row.address), "source": row.source,
             "state": row.state, "tries": row.tries, "created_at": row.created_at,
             "last_tried_at": row.last_tried_at, "delivered_at": row.delivered_at,
             "next_try_at": row.next_try_at if row.state == DeliveryState.PENDING else None,
             "last_status": row.last_status, "last_error": row.last_error}
            for row in rows]


def forget_jobs(session: Session, job_ids: Sequence[int]) -> None:
    """Delete the deliveries of jobs being purged (in the purge's transaction)."""
    if job_ids:
        session.execute(delete(Notification).where(col(Notification.job_id).in_(list(job_ids))))
