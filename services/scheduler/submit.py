"""Submitting a job: it, its tasks and their dependencies in one transaction, once per submission key."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.scheduler.models import (
    WAITING_TASK_STATES,
    Job,
    JobState,
    Outcome,
    Task,
    TaskDependency,
    TaskState,
    _job_dict,
)
from shared import events
from shared.db import Store
from shared.errors import InvalidSpec, LimitExceeded
from shared.spec import JobPlan

# --- submit -------------------------------------------------------------------------------------

def _submitted_before(session: Session, plan: JobPlan) -> dict[str, Any] | None:
    """The job an earlier submission under plan's key made, or None (no key, or a new one)."""
    if plan.submission_key is None:
        return None
    job = session.scalars(select(Job).where(Job.submission_key == plan.submission_key)).first()
    if job is None:
        return None
    if job.user != plan.user:
        raise InvalidSpec(f"submission_key: {plan.submission_key!r} was used by another user")
    return {**_job_dict(job), "repeated": True}


def submit_job(store: Store, plan: JobPlan, max_queued_per_user: int | None = None) -> Outcome:
    """Write the job, all its tasks and their dependencies in one transaction.

    Under a submission key already used, nothing is written and the first job is returned
    (with "repeated": true), so a caller may safely submit again after a timeout.
    """
    try:
        return _submit_job(store, plan, max_queued_per_user)
    except IntegrityError:
        # The same key submitted at the same moment: the other transaction won.
        with store.read() as session:
            first = _submitted_before(session, plan)
        if first is None:
            raise
        return Outcome(first)


def _submit_job(store: Store, plan: JobPlan, max_queued_per_user: int | None) -> Outcome:
    with store.write() as session:
        first = _submitted_before(session, plan)
        if first is not None:
            return Outcome(first)
        now = store.now(session)
        if max_queued_per_user is not None:
            queued = session.scalar(select(func.count()).where(
                Task.user == plan.user, Task.state.in_(WAITING_TASK_STATES)))  # type: ignore[attr-defined]
            if int(queued or 0) + len(plan.tasks) > max_queued_per_user:
                raise LimitExceeded(
                    f"user {plan.user} has {queued} tasks waiting; {len(plan.tasks)} more would "
                    f"pass the limit of {max_queued_per_user} per user")
        waiting_on_jobs = _unfinished_jobs(session, plan.depends_on_jobs)
        job = Job(name=plan.name, user=plan.user, pool=plan.pool, priority=plan.priority,
                  band=plan.band, task_count=len(plan.tasks),
                  depends_on=json.dumps(list(plan.depends_on_jobs)),
                  max_host_failures=plan.max_host_failures,
                  submission_key=plan.submission_key, created_at=now, keep=plan.keep,
                  retention=json.dumps(plan.retention) if plan.retention else None,
                  notify=json.dumps(list(plan.notify)) if plan.notify else None)
        session.add(job)
        session.flush()
        assert job.id is not None
        rows = []
        for t in plan.tasks:
            waits = bool(t.depends_on or t.depends_on_layers or waiting_on_jobs)
            rows.append({
                "job_id": job.id, "index": t.index, "name": t.name, "layer": t.layer,
                "frame_start": t.frames[0] if t.frames else None,
                "frame_end": t.frames[-1] if t.frames else None,
                "frame_count": len(t.frames) if t.frames else None,
                "user": plan.user, "pool": t.pool or plan.pool, "band": plan.band,
                "priority": plan.priority, "base_priority": plan.priority,
                "state": TaskState.WAITING if waits else TaskState.QUEUED,
                "reason": "waiting for its dependencies" if waits else None,
                "command": json.dumps(t.command), "shell": t.shell,
                "env": json.dumps(t.env), "cwd": t.cwd, "timeout": t.timeout,
                "stall_timeout": t.stall_timeout,
                "resources": json.dumps(t.resources) if t.resources else None,
                "preferred": json.dumps(t.preferred) if t.preferred else None,
                "licences": json.dumps(t.licences, sort_keys=True) if t.licences else None,
                "memory_factor": t.memory_factor,
                "max_attempts": t.max_attempts, "retry_delay": t.retry_delay,
                "retry_exit_codes": (json.dumps(t.retry_exit_codes)
                                     if t.retry_exit_codes is not None else None),
                "attempt": 1, "failures": 0, "head": False, "ready_at": now, "progress": 0,
                "created_at": now})
        session.execute(Task.__table__.insert(), rows)  # type: ignore[attr-defined]
        if any(t.depends_on or t.depends_on_layers for t in plan.tasks) or waiting_on_jobs:
            _insert_dependencies(session, job.id, plan, waiting_on_jobs)
        reply = _job_dict(job)
    return Outcome(reply, [(events.JOB_SUBMITTED, {
        "job_id": reply["id"], "user": plan.user, "pool": plan.pool, "task_count": len(rows)})])


def _unfinished_jobs(session: Session, job_ids: Sequence[int]) -> list[int]:
    """The jobs among `job_ids` not done yet; a missing one is refused (nothing is stored)."""
    waiting = []
    for position, job_id in enumerate(job_ids):
        other = session.get(Job, job_id)
        if other is None:
            raise InvalidSpec(f"depends_on[{position}]: job {job_id} does not exist")
        if other.state != JobState.DONE:
            waiting.append(job_id)
    return waiting


def _insert_dependencies(session: Session, job_id: int, plan: JobPlan,
                         waiting_on_jobs: Sequence[int]) -> None:
    ids = list(session.scalars(select(Task.id).where(Task.job_id == job_id)
                               .order_by(Task.index)))  # type: ignore[arg-type]
    rows: list[dict[str, Any]] = []
    for t in plan.tasks:
        task_id = ids[t.index]
        rows.extend({"task_id": task_id, "depends_on_task_id": ids[other]}
                    for other in t.depends_on)
        rows.extend({"task_id": task_id, "depends_on_job_id": job_id, "depends_on_layer": layer}
                    for layer in t.depends_on_layers)
        rows.extend({"task_id": task_id, "depends_on_job_id": other, "depends_on_layer": None}
                    for other in waiting_on_jobs)
    for start in range(0, len(rows), 5000):
        session.execute(TaskDependency.__table__.insert(),  # type: ignore[attr-defined]
                        [{"depends_on_task_id": None, "depends_on_job_id": None,
                          "depends_on_layer": None, **row} for row in rows[start:start + 5000]])
