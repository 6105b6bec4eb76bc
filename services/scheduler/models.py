"""The scheduler's tables, their states, and the lookups and JSON shapes the store's modules share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, false, func, select, text
from sqlalchemy.orm import Session
from sqlmodel import Field

from services.scheduler.tables import SchedulerTable
from shared import audit
from shared.errors import NotFound
from shared.notify import shown_address


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # nothing new starts until it is resumed
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_JOB_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class TaskState(StrEnum):
    WAITING = "waiting"        # dependencies (tasks, layers, other jobs) not done yet
    QUEUED = "queued"          # ready; waiting for an idle worker
    PAUSED = "paused"          # ready, but its job is paused
    DISPATCHED = "dispatched"  # its message is in a band queue
    RUNNING = "running"        # claimed under a lease
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"              # the worker stopped renewing its lease: not charged to retries
    HANDED_BACK = "handed_back"
    CANCELLED = "cancelled"


FINAL_TASK_STATES = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)
WAITING_TASK_STATES = (TaskState.WAITING, TaskState.QUEUED, TaskState.PAUSED)
ACTIVE_TASK_STATES = (TaskState.QUEUED, TaskState.DISPATCHED, TaskState.RUNNING,
                      TaskState.PAUSED)


class Job(SchedulerTable, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
    user: str = Field(index=True)
    pool: str
    priority: int
    band: str
    state: str = Field(default=JobState.QUEUED, index=True)
    task_count: int = 0
    depends_on: str = "[]"  # JSON list of job ids
    paused: bool = False
    max_host_failures: int = 3  # a host that fails this many of the job's attempts is excluded
    # The submitter's key: a second submit_job under it returns this job (see submit_job).
    submission_key: str | None = Field(default=None, index=True, unique=True)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    # What the cleanup service keeps of it once it ended (told in its job_finished event).
    keep: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    retention: str | None = None  # JSON {kind: seconds or "never"}, the spec's own delays
    notify: str | None = None  # JSON list of targets told of its end (shared.notify)


class Task(SchedulerTable, table=True):
    # Release reads tasks in exactly this index's order, so a pass stops after a few rows
    # whatever the backlog; the fairness index lets it step from user to user in log time.
    __table_args__ = (
        Index("ix_task_release", "state", "pool", "band", text("head DESC"),
              text("priority DESC"), "id"),
        Index("ix_task_fairness", "state", "pool", "band", "head", "priority", "user", "id"),
        Index("ix_task_lease", "state", "lease_expires_at"),
        Index("ix_task_job_state", "job_id", "state"),
        Index("ix_task_job_layer_state", "job_id", "layer", "state"),
        Index("ix_task_user_state", "user", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(index=True, foreign_key="job.id")
    index: int
    name: str
    layer: str | None = None
    frame_start: int | None = None
    frame_end: int | None = None
    frame_count: int | None = None
    user: str
    pool: str
    band: str
    priority: int
    base_priority: int | None = None  # as submitted; `priority` rises with waiting (aging)
    state: str = Field(default=TaskState.QUEUED)
    command: str            # JSON argv list
    shell: bool = False
    env: str = "{}"          # JSON object
    cwd: str | None = None
    timeout: float | None = None
    stall_timeout: float | None = None  # seconds without output before the task is killed
    resources: str | None = None  # JSON minimum {"cores", "memory_mb", "gpus", "custom"}
    preferred: str | None = None  # JSON preferred amounts, same shape
    licences: str | None = None   # JSON {licence name: count}, held while the task runs
    memory_factor: float = 1.0    # applied to memory after an out-of-memory kill
    max_attempts: int = 1
    retry_delay: float = 0.0
    retry_exit_codes: str | None = None   # JSON list, or NULL for any failure
    attempt: int = 1          # dispatch number: the identity of the current message
    failures: int = 0         # attempts charged to the retry budget
    head: bool = False        # put back after an infrastructure loss: first in its band
    ready_at: float = 0.0
    worker_id: str | None = Field(default=None, index=True)
    host: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    dispatched_at: float | None = None
    progress: int = 0
    exit_code: int | None = None
    result: str | None = None  # JSON
    reason: str | None = None
    log_tail: str | None = None
    log_path: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    # Ends in a row that said "no licence" (services.scheduler.refusals): never charged.
    licence_refusals: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})


class TaskDependency(SchedulerTable, table=True):
    """One thing a waiting task waits for: a task, a whole layer of a job, or a whole job."""

    __tablename__ = "task_dependency"

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(index=True, foreign_key="task.id")
    depends_on_task_id: int | None = Field(default=None, index=True)
    depends_on_job_id: int | None = Field(default=None, index=True)
    depends_on_layer: str | None = None  # with depends_on_job_id: that layer; without: the job


class Attempt(SchedulerTable, table=True):
    # Failed attempts are few: the bad-host check of every release pass starts from them
    # rather than from every attempt of the jobs it looks at.
    __table_args__ = (Index("ix_attempt_state_task", "state", "task_id"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(index=True, foreign_key="task.id")
    number: int
    worker_id: str
    host: str | None = None
    lease_token: str = Field(index=True)
    state: str = AttemptState.RUNNING
    started_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    log_path: str | None = None
    # The payload's own start and end on the worker's clock: the run time a user cares about.
    process_started_at: float | None = None
    process_ended_at: float | None = None
    peak_memory_mb: int | None = None
    # Set when the task is retried: a failure retried no longer counts towards excluding its
    # host from the job, so a retry can run where the failures were.
    excused: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


@dataclass
class Outcome:
    """What a state change returns: a JSON-able reply and the events to emit after commit."""

    reply: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _job_dict(job: Job, counts: dict[str, int] | None = None) -> dict[str, Any]:
    data = job.model_dump(mode="json")
    data["depends_on"] = json.loads(job.depends_on)  # stored as JSON text; sent as a list
    data["retention"] = json.loads(job.retention) if job.retention else None
    # A webhook's URL may hold its own secret: only its scheme and host are shown.
    data["notify"] = [{"kind": t["kind"], "target": shown_address(t["kind"], t["address"]),
                       "events": t["events"], "source": t["source"]}
                      for t in (json.loads(job.notify) if job.notify else [])]
    if counts is not None:
        data["counts"] = counts
    return data


def _task_dict(task: Task) -> dict[str, Any]:
    data = task.model_dump(mode="json", exclude={"lease_token"})
    data["command"] = json.loads(task.command)
    data["env"] = json.loads(task.env)
    data["retry_exit_codes"] = json.loads(task.retry_exit_codes) if task.retry_exit_codes else None
    data["result"] = json.loads(task.result) if task.result is not None else None
    data["resources"] = json.loads(task.resources) if task.resources else None
    data["preferred"] = json.loads(task.preferred) if task.preferred else None
    data["licences"] = json.loads(task.licences) if task.licences else None
    return data


def _get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    return task


def _get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def job_counts(session: Session, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {job_id: {} for job_id in job_ids}
    if not job_ids:
        return counts
    rows = session.execute(
        select(Task.job_id, Task.state, func.count()).where(Task.job_id.in_(job_ids))
        .group_by(Task.job_id, Task.state))
    for job_id, state, count in rows:
        counts[job_id][state] = count
    return counts



# --- the audit log (shared.audit) ---------------------------------------------------------------

AUDIT = audit.audit_table(SchedulerTable.metadata, "scheduler")
"""What was done to jobs and tasks, by whom, when and from where."""
