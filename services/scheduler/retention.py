"""The scheduler's side of retention: handing a result to its owner, and purging records of jobs
that ended long ago, when the cleanup service asks (it never touches these tables itself)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, select, update
from sqlmodel import col

from services.scheduler import notifications
from services.scheduler.store import (
    Attempt,
    Job,
    JobState,
    Outcome,
    Task,
    TaskDependency,
    TaskState,
    _get_task,
)
from shared import events
from shared.db import Store
from shared.errors import InvalidState

FINAL_JOB_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


def collect_result(store: Store, task_id: int) -> Outcome:
    """A done task's result for its owner; the event starts the clock of its removal."""
    with store.read() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        if task.state != TaskState.DONE:
            raise InvalidState(f"task {task_id} is {task.state}: only a done task has a result")
        reply = {"task_id": task_id, "job_id": task.job_id, "attempt": task.attempt,
                 "result": json.loads(task.result) if task.result is not None else None,
                 "collected_at": now}
    return Outcome(reply, [(events.RESULT_COLLECTED, {
        "task_id": task_id, "job_id": reply["job_id"], "attempt": reply["attempt"],
        "collected_at": now})])


def purge_jobs(store: Store, finished_before: float, job_ids: Sequence[int] | None = None,
               limit: int = 500) -> dict[str, Any]:
    """Delete the records (job, tasks, attempts, dependencies) of jobs that ended before
    `finished_before`, at most `limit`, only among `job_ids` when given.

    A kept job (`keep: true`) and one another unfinished job still waits for are left alone.
    """
    if limit < 1 or limit > 10000:
        raise InvalidState(f"limit: {limit} is not between 1 and 10000")
    with store.write() as session:
        query = select(col(Job.id)).where(col(Job.state).in_(FINAL_JOB_STATES),
                                          col(Job.finished_at) < finished_before,
                                          col(Job.keep).is_(False))
        if job_ids is not None:
            query = query.where(col(Job.id).in_([int(j) for j in job_ids]))
        waited_for = (select(col(TaskDependency.depends_on_job_id))
                      .join(Task, col(Task.id) == col(TaskDependency.task_id))
                      .where(col(TaskDependency.depends_on_job_id) == col(Job.id),
                             col(Task.job_id) != col(Job.id),
                             col(Task.state).notin_((TaskState.DONE, TaskState.FAILED,
                                                     TaskState.CANCELLED))))
        query = query.where(~waited_for.exists()).order_by(col(Job.id)).limit(limit)
        ids = [job_id for job_id in session.scalars(query) if job_id is not None]
        if ids:
            task_ids = select(col(Task.id)).where(col(Task.job_id).in_(ids))
            session.execute(delete(Attempt).where(col(Attempt.task_id).in_(task_ids)))
            session.execute(delete(TaskDependency).where(col(TaskDependency.task_id).in_(task_ids)))
            session.execute(delete(Task).where(col(Task.job_id).in_(ids)))
            notifications.forget_jobs(session, ids)
            session.execute(delete(Job).where(col(Job.id).in_(ids)))
    return {"purged": ids}


def forget_results(store: Store, task_ids: Sequence[int] = (),
                   job_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Drop the stored results of these tasks (and of every task of these jobs), once the
    cleanup service has removed their files: a result lives as long as its file."""
    with store.write() as session:
        conditions = []
        if task_ids:
            conditions.append(col(Task.id).in_([int(t) for t in task_ids]))
        if job_ids:
            conditions.append(col(Task.job_id).in_([int(j) for j in job_ids]))
        if not conditions:
            return {"forgotten": 0}
        done = cast(CursorResult[Any], session.execute(update(Task).where(
            or_(*conditions), col(Task.state) == TaskState.DONE,
            col(Task.result).is_not(None)).values(result=None)))
    return {"forgotten": int(done.rowcount)}
