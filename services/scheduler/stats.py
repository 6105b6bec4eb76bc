"""Read-only figures of the whole farm for the monitor's overview and /metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlmodel import col

from services.scheduler.store import Attempt, AttemptState, Task, TaskState
from shared.db import Store

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0)
"""Upper bounds (seconds) of the task duration histogram: a render frame to a day's simulation."""

FINISHED_STATES = (AttemptState.DONE, AttemptState.FAILED)

BACKLOG_STATES = (TaskState.WAITING, TaskState.QUEUED, TaskState.PAUSED, TaskState.DISPATCHED)
"""The states of a task that has not started: counted per pool and band beside the broker's
queue depths, since most of a backlog waits in the database, not in a queue."""


def farm_stats(store: Store, minutes: int = 60, histogram: bool = False,
               backlog: bool = False) -> dict[str, Any]:
    """Tasks by state, attempts by how they ended, tasks finished in each of the last `minutes`
    minutes (oldest first), with `backlog` the tasks not started per pool and band, and with
    `histogram` the run times of finished attempts."""
    with store.read() as session:
        now = store.now(session)
        tasks = {str(state): int(count) for state, count in session.execute(
            select(col(Task.state), func.count()).group_by(col(Task.state)))}
        ended = {str(state): int(count) for state, count in session.execute(
            select(col(Attempt.state), func.count())
            .where(col(Attempt.state) != AttemptState.RUNNING).group_by(col(Attempt.state)))}
        cutoff = now - minutes * 60
        per_minute = [0] * minutes
        for (finished_at,) in session.execute(
                select(col(Attempt.finished_at)).where(col(Attempt.finished_at) >= cutoff,
                                                       col(Attempt.state).in_(FINISHED_STATES))):
            age = int((now - float(finished_at or now)) // 60)
            if 0 <= age < minutes:
                per_minute[minutes - 1 - age] += 1
        answer: dict[str, Any] = {"at": now, "tasks": tasks, "attempts": ended,
                                  "finished_per_minute": per_minute}
        if backlog:
            answer["backlog"] = _backlog(session)
        if histogram:
            answer["durations"] = _durations(session)
    return answer


def _backlog(session: Any) -> list[dict[str, Any]]:
    """Tasks not started yet, per pool and band, by state (waiting on dependencies, queued,
    paused, dispatched), pools and bands in name order."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for pool, band, state, count in session.execute(
            select(col(Task.pool), col(Task.band), col(Task.state), func.count())
            .where(col(Task.state).in_(BACKLOG_STATES))
            .group_by(col(Task.pool), col(Task.band), col(Task.state))):
        row = rows.setdefault((str(pool), str(band)), {"pool": str(pool), "band": str(band),
                                                       **{str(s): 0 for s in BACKLOG_STATES}})
        row[str(state)] = int(count)
    return [rows[key] for key in sorted(rows)]


def _durations(session: Any) -> dict[str, Any]:
    """Cumulative bucket counts, sum and count of finished attempts' run times, in one scan."""
    run = col(Attempt.process_ended_at) - col(Attempt.process_started_at)
    columns = [func.sum(case((run <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
    row = session.execute(select(func.count(), func.sum(run), *columns).where(
        col(Attempt.state).in_(FINISHED_STATES), col(Attempt.process_started_at).is_not(None),
        col(Attempt.process_ended_at).is_not(None))).one()
    count, total, *buckets = row
    return {"count": int(count or 0), "sum": float(total or 0.0),
            "buckets": [[bound, int(n or 0)] for bound, n in zip(DURATION_BUCKETS, buckets,
                                                                  strict=True)]}
