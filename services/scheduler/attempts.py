"""An attempt under its lease: claim, renew, finish (licence refusals too), hand back, expiry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.scheduler.dispatch import should_retry
from services.scheduler.models import (
    Attempt,
    AttemptState,
    Job,
    JobState,
    Outcome,
    Task,
    TaskState,
    _get_task,
)
from services.scheduler.readiness import (
    _dependents_of_task,
    _finish_job_if_complete,
    _note_failure_for_good,
    _queue_if_ready,
    _ready_state,
)
from services.scheduler.refusals import RefusalPolicy
from services.scheduler.release import excluded_hosts
from shared import events
from shared.db import Store
from shared.errors import StaleLease
from shared.redact import fingerprint

# --- claim, renew, finish -----------------------------------------------------------------------

def _run_payload(task: Task, lease_seconds: float) -> dict[str, Any]:
    return {
        "status": "claimed", "task_id": task.id, "job_id": task.job_id, "attempt": task.attempt,
        "band": task.band,
        "lease_token": task.lease_token, "lease_seconds": lease_seconds, "name": task.name,
        "command": json.loads(task.command), "shell": task.shell, "env": json.loads(task.env),
        "cwd": task.cwd, "timeout": task.timeout, "stall_timeout": task.stall_timeout,
        "resources": json.loads(task.resources) if task.resources else None,
        "preferred": json.loads(task.preferred) if task.preferred else None,
        "licences": json.loads(task.licences) if task.licences else None,
    }


def claim_task(store: Store, task_id: int, attempt: int, worker_id: str, host: str | None,
               lease_seconds: float) -> Outcome:
    """Move a dispatched task to RUNNING under a new lease, or answer "stale" for old messages."""
    with store.write() as session:
        now = store.now(session)
        task = session.get(Task, task_id)
        if task is None or task.attempt != attempt:
            return Outcome({"status": "stale", "task_id": task_id})
        if task.state == TaskState.RUNNING:
            if task.worker_id == worker_id:
                # The same worker asking again (its first reply was lost): same lease, renewed.
                task.lease_expires_at = now + lease_seconds
                return Outcome(_run_payload(task, lease_seconds))
            return Outcome({"status": "stale", "task_id": task_id})
        if task.state not in (TaskState.QUEUED, TaskState.DISPATCHED):
            return Outcome({"status": "stale", "task_id": task_id})
        job = session.get(Job, task.job_id)
        if job is not None and job.paused:
            # Its message was on its way when the job was paused: it waits for resume instead.
            task.state = TaskState.PAUSED
            return Outcome({"status": "stale", "task_id": task_id})
        if host is not None and host in excluded_hosts(session, [task.job_id]).get(
                task.job_id, frozenset()):
            # This host keeps failing this job: send the task back for another host.
            task.attempt += 1
            task.state, task.head = TaskState.QUEUED, True
            task.reason = f"host {host} is excluded from job {task.job_id} after failures"
            return Outcome({"status": "excluded", "task_id": task_id})
        token = uuid.uuid4().hex
        claimed = session.execute(
            update(Task)
            .where(Task.id == task_id, Task.attempt == attempt,
                   Task.state.in_([TaskState.QUEUED, TaskState.DISPATCHED]))  # type: ignore[attr-defined]
            .values(state=TaskState.RUNNING, worker_id=worker_id, host=host, lease_token=token,
                    lease_expires_at=now + lease_seconds, started_at=now, head=False,
                    progress=0)).rowcount
        if claimed != 1:
            return Outcome({"status": "stale", "task_id": task_id})
        session.refresh(task)
        session.add(Attempt(task_id=task_id, number=attempt, worker_id=worker_id, host=host,
                            lease_token=token, started_at=now))
        job = session.get(Job, task.job_id)
        if job is not None and job.started_at is None:
            job.started_at = now
        if job is not None and job.state == JobState.QUEUED:
            job.state = JobState.RUNNING
        payload = _run_payload(task, lease_seconds)
        # The attempt's scratch directory outlives it only when the spec asks to keep it.
        payload["keep_scratch"] = job is not None and (
            job.keep or "scratch" in json.loads(job.retention or "{}"))
    return Outcome(payload, [(events.TASK_STARTED, {
        "task_id": task_id, "job_id": payload["job_id"], "attempt": attempt,
        "worker_id": worker_id, "host": host})])


def renew_lease(store: Store, task_id: int, lease_token: str, progress: int | None,
                lease_seconds: float) -> Outcome:
    """Extend a running task's lease (the worker's heartbeat), recording its progress."""
    with store.write() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        if task.state != TaskState.RUNNING or task.lease_token != lease_token:
            raise StaleLease(f"task {task_id}: lease {fingerprint(lease_token)} is no longer current "
                             f"(task is {task.state})")
        task.lease_expires_at = now + lease_seconds
        emitted = []
        if progress is not None and progress != task.progress:
            task.progress = max(0, min(100, int(progress)))
            emitted.append((events.TASK_PROGRESSED, {
                "task_id": task_id, "job_id": task.job_id, "progress": task.progress}))
        return Outcome({"lease_seconds": lease_seconds, "lease_expires_at": task.lease_expires_at},
                       emitted)



def finish_report_fields(report: Mapping[str, Any]) -> dict[str, Any]:
    """finish_task's arguments from a worker's finish report; ValueError names a bad field."""
    if not isinstance(report, Mapping):
        raise ValueError(f"a report is a JSON object, not {type(report).__name__}")

    def field(name: str, kinds: tuple[type, ...], required: bool = False) -> Any:
        value = report.get(name)
        if value is None:
            if required:
                raise ValueError(f"{name} is missing")
            return None
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{name} must be {' or '.join(k.__name__ for k in kinds)}, "
                             f"not {value!r:.80}")
        return value

    return {"task_id": field("task_id", (int,), True),
            "lease_token": field("lease_token", (str,), True),
            "exit_code": field("exit_code", (int,)),
            "result": report.get("result"),
            "reason": field("reason", (str,)),
            "log_tail": field("log_tail", (str,)),
            "log_path": field("log_path", (str,)),
            "process_started_at": field("process_started_at", (int, float)),
            "process_ended_at": field("process_ended_at", (int, float)),
            "peak_memory_mb": field("peak_memory_mb", (int,))}


def finish_task(store: Store, task_id: int, lease_token: str, exit_code: int | None,
                result: Any = None, reason: str | None = None, log_tail: str | None = None,
                log_path: str | None = None, process_started_at: float | None = None,
                process_ended_at: float | None = None,
                peak_memory_mb: int | None = None,
                refusals: RefusalPolicy | None = None) -> Outcome:
    """Record an attempt's end: DONE, a retry under the task's policy, or FAILED with its reason.

    An end that `refusals` reads as "no licence" puts the task back in its queue uncharged
    instead, after that policy's growing delay, until its limit of refusals in a row.
    """
    with store.write() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        attempt = session.scalars(select(Attempt).where(
            Attempt.task_id == task_id, Attempt.lease_token == lease_token)).first()
        if attempt is not None and _late_but_unanswered(task, attempt):
            _revive(task, attempt)
        if task.state != TaskState.RUNNING or task.lease_token != lease_token:
            if attempt is not None and attempt.state in (AttemptState.DONE, AttemptState.FAILED):
                # A repeated report of an attempt already recorded: answer as the first time.
                return Outcome({"task_id": task_id, "state": task.state, "duplicate": True})
            raise StaleLease(f"task {task_id}: lease {fingerprint(lease_token)} is no longer current "
                             f"(task is {task.state})")
        succeeded = exit_code == 0 and reason is None
        why = None if succeeded else (reason or f"exited with code {exit_code}")
        refused = refusals.matched(exit_code, reason, log_tail) if refusals else None
        if refused is not None and refusals is not None:
            if task.licence_refusals < refusals.limit:
                if attempt is not None:
                    attempt.process_started_at = process_started_at
                    attempt.process_ended_at = process_ended_at
                    attempt.peak_memory_mb = peak_memory_mb
                return _requeue_refused(session, task, attempt, refusals, refused, exit_code,
                                        log_path, now)
            why = f"{why} (no licence {task.licence_refusals + 1} times in a row: charged)"
        task.licence_refusals = 0
        if attempt is not None:
            attempt.state = AttemptState.DONE if succeeded else AttemptState.FAILED
            attempt.finished_at = now
            attempt.exit_code = exit_code
            attempt.reason = why
            attempt.log_path = log_path
            attempt.process_started_at = process_started_at
            attempt.process_ended_at = process_ended_at
            attempt.peak_memory_mb = peak_memory_mb
        task.exit_code = exit_code
        task.log_path = log_path
        task.lease_token = None
        task.lease_expires_at = None
        emitted: list[tuple[str, dict[str, Any]]] = []
        base = {"task_id": task_id, "job_id": task.job_id, "attempt": task.attempt,
                "worker_id": task.worker_id, "exit_code": exit_code}
        if succeeded:
            task.state = TaskState.DONE
            task.progress = 100
            task.result = json.dumps(result) if result is not None else None
            task.reason = None
            task.finished_at = now
            session.flush()
            _queue_if_ready(session, _dependents_of_task(session, task), now)
            emitted.append((events.TASK_FINISHED, {**base, "state": TaskState.DONE}))
        else:
            task.failures += 1
            assert why is not None
            codes = json.loads(task.retry_exit_codes) if task.retry_exit_codes else None
            if should_retry(task.failures, task.max_attempts, exit_code, codes):
                if why.startswith(OUT_OF_MEMORY) and task.resources and task.memory_factor > 1:
                    _raise_memory(task)
                task.state = _ready_state(session, task)
                task.attempt += 1
                task.ready_at = now + task.retry_delay
                task.reason = f"retrying after attempt {task.attempt - 1}: {why}"
                task.worker_id = None
                emitted.append((events.TASK_FAILED, {**base, "reason": why, "will_retry": True}))
            else:
                task.state = TaskState.FAILED
                task.reason = why
                task.log_tail = log_tail
                task.finished_at = now
                session.flush()
                _queue_if_ready(session, _dependents_of_task(session, task), now)
                _note_failure_for_good(session, task, now)
                emitted.append((events.TASK_FAILED, {**base, "reason": why, "will_retry": False}))
        emitted.extend(_finish_job_if_complete(session, task.job_id, now))
        return Outcome({"task_id": task_id, "state": task.state}, emitted)


def _late_but_unanswered(task: Task, attempt: Attempt) -> bool:
    """A report of an attempt whose lease ran out, for a task no other attempt has claimed since.

    Its payload ended under the lease, but the report came late (its worker was stopped or
    killed, and another worker of the host sent it: services/worker/outbox.py). What it says
    happened did happen, so it is taken, and the attempt that would have run again does not.
    """
    return (attempt.state == AttemptState.LOST and task.lease_token is None
            and task.attempt == attempt.number + 1
            and task.state in (TaskState.QUEUED, TaskState.DISPATCHED, TaskState.PAUSED))


def _revive(task: Task, attempt: Attempt) -> None:
    """Put a lost attempt back as the task's running one, for its late report to be applied."""
    task.state = TaskState.RUNNING
    task.attempt = attempt.number
    task.lease_token = attempt.lease_token
    task.worker_id = attempt.worker_id
    task.host = attempt.host
    task.head = False
    attempt.state = AttemptState.RUNNING
    attempt.finished_at = None
    attempt.reason = None


def _requeue_refused(session: Session, task: Task, attempt: Attempt | None,
                     refusals: RefusalPolicy, refused: str, exit_code: int | None,
                     log_path: str | None, now: float) -> Outcome:
    """Back in its queue, uncharged, after the delay of this many refusals in a row."""
    task.licence_refusals += 1
    delay = refusals.delay(task.licence_refusals)
    why = (f"no licence ({refused}): back in its queue, not charged (refusal "
           f"{task.licence_refusals} of {refusals.limit} in a row)")
    if attempt is not None:
        attempt.state = AttemptState.HANDED_BACK
        attempt.finished_at, attempt.exit_code, attempt.reason = now, exit_code, why
        attempt.log_path = log_path
    base = {"task_id": task.id, "job_id": task.job_id, "attempt": task.attempt,
            "worker_id": task.worker_id, "exit_code": exit_code}
    task.exit_code, task.log_path = exit_code, log_path
    task.state = _ready_state(session, task)
    task.attempt += 1
    task.head = False  # it waits its delay, then takes its turn like any other
    task.ready_at = now + delay
    task.worker_id = task.lease_token = task.lease_expires_at = None
    task.reason = why
    # task_failed with will_retry: the attempt's reservation and licences are given back.
    return Outcome({"task_id": task.id, "state": task.state, "licence_refused": True},
                   [(events.TASK_FAILED, {**base, "reason": why, "will_retry": True,
                                          "licence_refused": True})])


OUT_OF_MEMORY = "out of memory"


def _raise_memory(task: Task) -> None:
    """Ask for memory_factor times more memory next time (OpenCue's retry with more memory)."""
    for column in ("resources", "preferred"):
        amounts = json.loads(getattr(task, column) or "null")
        if amounts and amounts.get("memory_mb"):
            amounts["memory_mb"] = int(amounts["memory_mb"] * task.memory_factor)
            setattr(task, column, json.dumps(amounts))


def hand_back_task(store: Store, task_id: int, lease_token: str, reason: str,
                   delay_seconds: float = 0.0) -> Outcome:
    """A worker gives a claimed task back (draining, or no room): first in its band, not charged."""
    with store.write() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        if task.state != TaskState.RUNNING or task.lease_token != lease_token:
            return Outcome({"task_id": task_id, "state": task.state, "duplicate": True})
        _requeue_at_head(session, task, AttemptState.HANDED_BACK, reason, now)
        # A worker with no room hands back; the delay keeps it from taking the task straight
        # back before anything on its host has changed.
        task.ready_at = now + max(0.0, float(delay_seconds))
        return Outcome({"task_id": task_id, "state": task.state})


def _requeue_at_head(session: Session, task: Task, attempt_state: AttemptState, reason: str,
                     now: float) -> None:
    attempt = session.scalars(select(Attempt).where(
        Attempt.task_id == task.id, Attempt.lease_token == task.lease_token)).first()
    if attempt is not None:
        attempt.state = attempt_state
        attempt.finished_at = now
        attempt.reason = reason
    task.state = _ready_state(session, task)
    task.attempt += 1
    task.head = True
    task.ready_at = now
    task.worker_id = None
    task.lease_token = None
    task.lease_expires_at = None
    task.reason = reason


def expire_leases(store: Store, grace_seconds: float = 0.0) -> list[dict[str, Any]]:
    """Put every task whose lease ran out back at the head of its band; return what was lost.

    Each waits `grace_seconds` before it may run again: time for the report of a payload that
    ended just inside its lease to arrive from another worker of its host (see
    `_late_but_unanswered`).
    """
    with store.write() as session:
        now = store.now(session)
        tasks = session.scalars(select(Task).where(
            Task.state == TaskState.RUNNING, Task.lease_expires_at < now).limit(1000)).all()
        lost = []
        for task in tasks:
            lost.append({"task_id": task.id, "worker_id": task.worker_id, "attempt": task.attempt})
            _requeue_at_head(session, task, AttemptState.LOST,
                             f"lease expired: worker {task.worker_id} stopped reporting", now)
            task.ready_at = now + grace_seconds
    return lost


def extend_all_leases(store: Store, lease_seconds: float) -> int:
    """At start-up, give running tasks one lease of grace to report in after our downtime."""
    with store.write() as session:
        now = store.now(session)
        return int(session.execute(
            update(Task).where(Task.state == TaskState.RUNNING)
            .values(lease_expires_at=now + lease_seconds)).rowcount)
