"""When a waiting task is ready, and when a job ends and frees the jobs waiting for it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.scheduler import notifications
from services.scheduler.models import (
    ACTIVE_TASK_STATES,
    FINAL_JOB_STATES,
    Job,
    JobState,
    Task,
    TaskDependency,
    TaskState,
    job_counts,
)
from shared import events


def unmet_dependencies(session: Session, task: Task, most: int = 5) -> list[str]:
    """What a waiting task still waits for, in words, at most `most` items."""
    unmet = []
    for dependency in session.scalars(select(TaskDependency).where(
            TaskDependency.task_id == task.id)):
        if dependency.depends_on_task_id is not None:
            other = session.get(Task, dependency.depends_on_task_id)
            if other is not None and other.state != TaskState.DONE:
                unmet.append(f"task {other.id} ({other.name}) is {other.state}")
        elif dependency.depends_on_layer is not None:
            assert dependency.depends_on_job_id is not None
            left = session.scalar(select(func.count()).where(
                Task.job_id == dependency.depends_on_job_id,
                Task.layer == dependency.depends_on_layer,
                Task.state != TaskState.DONE))
            if left:
                unmet.append(f"layer {dependency.depends_on_layer} has {left} tasks not done")
        elif dependency.depends_on_job_id is not None:
            job = session.get(Job, dependency.depends_on_job_id)
            if job is not None and job.state != JobState.DONE:
                unmet.append(f"job {job.id} ({job.name}) is {job.state}")
        if len(unmet) >= most:
            break
    return unmet


def _ready_state(session: Session, task: Task) -> TaskState:
    """QUEUED, or PAUSED when the task's job is paused."""
    job = session.get(Job, task.job_id)
    return TaskState.PAUSED if job is not None and job.paused else TaskState.QUEUED


def _queue_if_ready(session: Session, task_ids: Iterable[int], now: float) -> None:
    for task_id in sorted(set(task_ids)):
        task = session.get(Task, task_id)
        if task is None or task.state != TaskState.WAITING:
            continue
        unmet = unmet_dependencies(session, task, most=1)
        if unmet:
            task.reason = f"waiting for {unmet[0]}"
        else:
            task.state, task.ready_at, task.reason = _ready_state(session, task), now, None


def _dependents_of_task(session: Session, task: Task) -> set[int]:
    """Waiting tasks that may have been waiting for `task` (directly, or for its whole layer)."""
    dependents = set(session.scalars(select(TaskDependency.task_id).where(
        TaskDependency.depends_on_task_id == task.id)))
    if task.layer is not None:
        dependents |= set(session.scalars(select(TaskDependency.task_id).where(
            TaskDependency.depends_on_job_id == task.job_id,
            TaskDependency.depends_on_layer == task.layer)))
    return dependents


def _dependents_of_job(session: Session, job_id: int) -> set[int]:
    return set(session.scalars(select(TaskDependency.task_id).where(
        TaskDependency.depends_on_job_id == job_id,
        TaskDependency.depends_on_layer.is_(None))))  # type: ignore[union-attr]




def _finish_job_if_complete(session: Session, job_id: int,
                            now: float) -> list[tuple[str, dict[str, Any]]]:
    """End the job once nothing in it can run any more, and release jobs waiting for it.

    Tasks still waiting count as able to run unless something in the job failed or was
    cancelled: then they are blocked until that task is retried. The job ends FAILED when any
    task failed, else CANCELLED when any was cancelled, else DONE; only a DONE job releases the
    jobs that depend on it (the others wait, and say why, until it is retried).
    """
    job = session.get(Job, job_id)
    if job is None or job.state in FINAL_JOB_STATES:
        return []

    def any_in(*states: str) -> bool:
        return session.scalar(select(Task.id).where(
            Task.job_id == job_id, Task.state.in_(states)).limit(1)) is not None  # type: ignore[attr-defined]

    if any_in(*ACTIVE_TASK_STATES):
        return []
    failed, cancelled = any_in(TaskState.FAILED), any_in(TaskState.CANCELLED)
    if any_in(TaskState.WAITING) and not (failed or cancelled):
        return []  # waiting for another job
    job.state = (JobState.FAILED if failed else JobState.CANCELLED if cancelled
                 else JobState.DONE)
    job.finished_at = now
    if job.state == JobState.DONE:
        _queue_if_ready(session, _dependents_of_job(session, job_id), now)
    if job.notify:
        notifications.job_ended(session, job, job_counts(session, [job_id])[job_id], now)
    return [job_finished_event(job)]


def _note_failure_for_good(session: Session, task: Task, now: float) -> None:
    """Tell those who asked that the job's first task failed for good (once per failing
    streak: a retried job's next first failure is told again)."""
    job = session.get(Job, task.job_id)
    if job is None or not job.notify:
        return
    failed = session.scalar(select(func.count()).where(Task.job_id == task.job_id,
                                                       Task.state == TaskState.FAILED))
    if failed == 1:
        notifications.first_task_failed(
            session, job, job_counts(session, [task.job_id])[task.job_id],
            {"task_id": task.id, "name": task.name, "exit_code": task.exit_code,
             "reason": task.reason}, now)


def job_finished_event(job: Job) -> tuple[str, dict[str, Any]]:
    """`job_finished` for a job that just ended: when, and what its spec says to keep."""
    return (events.JOB_FINISHED, {"job_id": job.id, "state": job.state, "user": job.user,
                                  "finished_at": job.finished_at, "keep": job.keep,
                                  "retention": json.loads(job.retention) if job.retention
                                  else None})
