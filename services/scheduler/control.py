"""Changes to jobs and tasks: cancel, retry, pause, resume, priority, requeue, and priority aging."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.scheduler import notifications
from services.scheduler.attempts import _requeue_at_head
from services.scheduler.models import (
    FINAL_JOB_STATES,
    FINAL_TASK_STATES,
    Attempt,
    AttemptState,
    Job,
    JobState,
    Outcome,
    Task,
    TaskDependency,
    TaskState,
    _get_job,
    _get_task,
    job_counts,
)
from services.scheduler.readiness import (
    _dependents_of_task,
    _finish_job_if_complete,
    _queue_if_ready,
    _ready_state,
    job_finished_event,
)
from shared import events
from shared.db import Store
from shared.errors import InvalidState

# --- cancel -------------------------------------------------------------------------------------

def _cancel_tasks(session: Session, tasks: Sequence[Task], now: float) -> list[dict[str, Any]]:
    killed = []
    for task in tasks:
        if task.state in FINAL_TASK_STATES:
            continue
        if task.state == TaskState.RUNNING:
            killed.append({"task_id": task.id, "job_id": task.job_id,
                           "worker_id": task.worker_id, "attempt": task.attempt})
            attempt = session.scalars(select(Attempt).where(
                Attempt.task_id == task.id, Attempt.lease_token == task.lease_token)).first()
            if attempt is not None:
                attempt.state = AttemptState.CANCELLED
                attempt.finished_at = now
                attempt.reason = "cancelled"
        task.state = TaskState.CANCELLED
        task.reason = "cancelled"
        task.lease_token = None
        task.lease_expires_at = None
        task.finished_at = now
    return killed


def cancel_job(store: Store, job_id: int) -> Outcome:
    with store.write() as session:
        now = store.now(session)
        job = _get_job(session, job_id)
        if job.state in FINAL_JOB_STATES:
            return Outcome({"job_id": job_id, "state": job.state, "cancelled_tasks": 0})
        tasks = session.scalars(select(Task).where(
            Task.job_id == job_id, Task.state.notin_(FINAL_TASK_STATES))).all()  # type: ignore[attr-defined]
        killed = _cancel_tasks(session, tasks, now)
        job.state = JobState.CANCELLED
        job.finished_at = now
        if job.notify:
            notifications.job_ended(session, job, job_counts(session, [job_id])[job_id], now)
        emitted = [(events.TASK_CANCELLED, k) for k in killed]
        emitted.append(job_finished_event(job))
        return Outcome({"job_id": job_id, "state": job.state, "cancelled_tasks": len(tasks)},
                       emitted)


def cancel_task(store: Store, task_id: int) -> Outcome:
    with store.write() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        if task.state in FINAL_TASK_STATES:
            raise InvalidState(f"task {task_id} is already {task.state}")
        killed = _cancel_tasks(session, [task], now)
        session.flush()
        _queue_if_ready(session, _dependents_of_task(session, task), now)  # say why they wait
        emitted: list[tuple[str, dict[str, Any]]] = [(events.TASK_CANCELLED, k) for k in killed]
        emitted.extend(_finish_job_if_complete(session, task.job_id, now))
        return Outcome({"task_id": task_id, "state": task.state}, emitted)


# --- retry ----------------------------------------------------------------------------------------

def _retry(session: Session, task: Task, now: float) -> None:
    session.execute(update(Attempt).where(Attempt.task_id == task.id,
                                          Attempt.state == AttemptState.FAILED)
                    .values(excused=True))
    task.failures, task.attempt, task.head = 0, task.attempt + 1, False
    task.licence_refusals = 0
    task.exit_code = task.finished_at = task.log_tail = task.result = None
    task.worker_id = task.lease_token = task.lease_expires_at = None
    task.state, task.ready_at, task.reason = TaskState.WAITING, now, None
    session.flush()
    _queue_if_ready(session, [task.id] if task.id is not None else [], now)
    if task.state == TaskState.WAITING and not session.scalar(
            select(TaskDependency.id).where(TaskDependency.task_id == task.id).limit(1)):
        task.state = _ready_state(session, task)  # nothing to wait for


def _reopen_job(session: Session, job_id: int) -> None:
    job = session.get(Job, job_id)
    if job is not None and job.state in FINAL_JOB_STATES:
        job.state = JobState.PAUSED if job.paused else JobState.RUNNING
        job.finished_at = None


def retry_task(store: Store, task_id: int) -> Outcome:
    """Run a failed or cancelled task again with a fresh retry budget; its dependents follow."""
    with store.write() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        if task.state not in (TaskState.FAILED, TaskState.CANCELLED):
            raise InvalidState(f"task {task_id} is {task.state}: only failed or cancelled tasks "
                               "can be retried")
        _retry(session, task, now)
        _reopen_job(session, task.job_id)
        return Outcome({"task_id": task_id, "state": task.state})


def retry_job(store: Store, job_id: int) -> Outcome:
    """Retry every failed task of a job."""
    with store.write() as session:
        now = store.now(session)
        _get_job(session, job_id)
        failed = session.scalars(select(Task).where(
            Task.job_id == job_id, Task.state == TaskState.FAILED)).all()
        for task in failed:
            _retry(session, task, now)
        if failed:
            _reopen_job(session, job_id)
        return Outcome({"job_id": job_id, "retried_tasks": len(failed)})


# --- job control ----------------------------------------------------------------------------------

def pause_job(store: Store, job_id: int, kill: bool = False) -> Outcome:
    """Start nothing new from this job; with `kill`, stop its running tasks now (uncharged)."""
    with store.write() as session:
        now = store.now(session)
        job = _get_job(session, job_id)
        if job.state in FINAL_JOB_STATES:
            raise InvalidState(f"job {job_id} is {job.state}: there is nothing to pause")
        job.paused, job.state = True, JobState.PAUSED
        session.execute(update(Task).where(Task.job_id == job_id,
                                           Task.state == TaskState.QUEUED)
                        .values(state=TaskState.PAUSED))
        emitted: list[tuple[str, dict[str, Any]]] = []
        if kill:
            running = session.scalars(select(Task).where(
                Task.job_id == job_id, Task.state == TaskState.RUNNING)).all()
            for task in running:
                emitted.append((events.TASK_CANCELLED, {"task_id": task.id, "job_id": job_id,
                                                        "worker_id": task.worker_id,
                                                        "attempt": task.attempt}))
                _requeue_at_head(session, task, AttemptState.CANCELLED, "job paused", now)
        return Outcome({"job_id": job_id, "paused": True, "killed_tasks": len(emitted)}, emitted)


def resume_job(store: Store, job_id: int) -> Outcome:
    with store.write() as session:
        now = store.now(session)
        job = _get_job(session, job_id)
        job.paused = False
        if job.state == JobState.PAUSED:
            job.state = JobState.RUNNING if job.started_at is not None else JobState.QUEUED
        resumed = session.execute(update(Task).where(Task.job_id == job_id,
                                                     Task.state == TaskState.PAUSED)
                                  .values(state=TaskState.QUEUED, ready_at=now)).rowcount
        return Outcome({"job_id": job_id, "paused": False, "resumed_tasks": int(resumed)})


def set_job_priority(store: Store, job_id: int, priority: int, band: str) -> Outcome:
    """Change a job's priority, queued and running tasks alike (`band` already checked)."""
    with store.write() as session:
        job = _get_job(session, job_id)
        job.priority, job.band = priority, band
        session.execute(update(Task).where(Task.job_id == job_id,
                                           Task.state.notin_(FINAL_TASK_STATES))  # type: ignore[attr-defined]
                        .values(priority=priority, base_priority=priority, band=band))
        return Outcome({"job_id": job_id, "priority": priority, "band": band})


def requeue_task(store: Store, task_id: int) -> Outcome:
    """Put a task at the head of its band: a queued one moves to the front, a dispatched one's
    message is replaced, a running one is stopped (uncharged), a failed or cancelled one is
    retried."""
    with store.write() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        emitted: list[tuple[str, dict[str, Any]]] = []
        if task.state == TaskState.RUNNING:
            emitted.append((events.TASK_CANCELLED, {"task_id": task.id, "job_id": task.job_id,
                                                    "worker_id": task.worker_id,
                                                    "attempt": task.attempt}))
            _requeue_at_head(session, task, AttemptState.CANCELLED, "requeued", now)
        elif task.state == TaskState.DISPATCHED:
            task.attempt += 1  # the message already sent becomes stale
            task.state, task.head = _ready_state(session, task), True
        elif task.state in (TaskState.QUEUED, TaskState.PAUSED):
            task.head, task.ready_at = True, min(task.ready_at, now)
        elif task.state in (TaskState.FAILED, TaskState.CANCELLED):
            _retry(session, task, now)
            _reopen_job(session, task.job_id)
        return Outcome({"task_id": task_id, "state": task.state, "head": task.head}, emitted)


def age_waiting_tasks(store: Store, bands: Iterable[Any], older_than: float) -> int:
    """Raise by one the priority of tasks queued longer than `older_than`, up to their band's top.

    Run every `older_than` seconds, a task's priority grows by one per period it waits, so
    nothing in a band starves behind a stream of higher-priority work.
    """
    with store.write() as session:
        now = store.now(session)
        raised = 0
        for band in bands:
            raised += int(session.execute(
                update(Task).where(Task.state == TaskState.QUEUED, Task.band == band.name,
                                   Task.priority < band.high, Task.ready_at < now - older_than)
                .values(priority=Task.priority + 1)).rowcount)
        return raised
