"""The scheduler's own tables (jobs, tasks, attempts) and every state change on them, without nameko.

Each function that changes state runs in one transaction and returns the events to emit once it
has committed. Every one is safe to run twice: RPC requests are redelivered when a service dies
between doing the work and acknowledging the request.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, and_, false, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import Field, col

from services.scheduler import notifications
from services.scheduler.dispatch import (
    Amounts,
    Candidate,
    IdleWorker,
    Licences,
    Release,
    absorb_dispatched,
    fits,
    plan_release,
    should_retry,
    unservable,
    wanted_queues,
)
from services.scheduler.refusals import RefusalPolicy
from services.scheduler.tables import SchedulerTable as SchedulerTable  # its tables' base
from shared import audit, events
from shared.db import Store
from shared.errors import InvalidSpec, InvalidState, LimitExceeded, NotFound, StaleLease
from shared.notify import shown_address
from shared.redact import fingerprint
from shared.spec import JobPlan


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


# --- release ------------------------------------------------------------------------------------

# What a release pass reads of each ready task; _candidate turns a row into a Candidate.
CANDIDATE_COLUMNS = (Task.id, Task.attempt, Task.user, Task.priority, Task.head, Task.job_id,
                     Task.resources, Task.preferred, Task.licences)


def needs_of(resources_json: str | None) -> Amounts:
    """A task's minimum (cores, memory MB, GPUs) from its stored resources."""
    if not resources_json:
        return (0.0, 0, 0)
    amounts = json.loads(resources_json)
    return (float(amounts.get("cores") or 0), int(amounts.get("memory_mb") or 0),
            int(amounts.get("gpus") or 0))


def licences_of(licences_json: str | None) -> Licences:
    """A task's licences as sorted (name, count) pairs."""
    if not licences_json:
        return ()
    return tuple(sorted((str(name), int(count))
                        for name, count in json.loads(licences_json).items()))


def wants_of(resources_json: str | None, preferred_json: str | None,
             licences_json: str | None = None) -> str | None:
    """What a task's message carries for its worker to book (see Release.wants), as JSON."""
    wants: dict[str, Any] = {}
    if resources_json:
        wants["resources"] = json.loads(resources_json)
        if preferred_json:
            wants["preferred"] = json.loads(preferred_json)
    if licences_json:
        wants["licences"] = json.loads(licences_json)
    return json.dumps(wants) if wants else None


def _candidate(row: Any) -> Candidate:
    """A Candidate from a row of CANDIDATE_COLUMNS."""
    return Candidate(row[0], row[1], row[2], row[3], bool(row[4]), row[5], needs_of(row[6]),
                     wants_of(row[6], row[7], row[8]), licences_of(row[8]))


def plan_next_releases(store: Store, workers: Iterable[IdleWorker],
                       bands_high_first: Sequence[str], window: int = 16,
                       last_served: Mapping[str, float] | None = None,
                       host_free: Mapping[str, Amounts] | None = None,
                       licence_free: Mapping[str, int] | None = None) -> list[Release]:
    """Choose the tasks to publish now, one per idle worker that serves their pool and band.

    Per pool and band it reads the first `slots + window` ready tasks in order, plus the oldest
    task of every user in the best (head, priority) group, so fairness sees every user however
    deep one user's backlog is. `licence_free` is what the licence service last said was free;
    the licences of tasks already sent but not yet started are taken from it here.
    """
    with store.read() as session:
        in_flight = session.execute(
            select(Task.state, Task.worker_id, Task.pool, Task.band, Task.user, Task.licences)
            .where(Task.state.in_([TaskState.RUNNING, TaskState.DISPATCHED]))).all()  # type: ignore[attr-defined]
        busy = {row[1] for row in in_flight if row[0] == TaskState.RUNNING}
        idle = [w for w in workers if w.worker_id not in busy]
        if idle:
            idle = absorb_dispatched(idle, [(row[2], row[3]) for row in in_flight
                                            if row[0] == TaskState.DISPATCHED])
        if not idle:
            return []
        now = store.now(session)
        candidates: dict[tuple[str, str], list[Candidate]] = {}
        for (pool, band), slots in wanted_queues(idle).items():
            ready = (Task.state == TaskState.QUEUED, Task.pool == pool, Task.band == band,
                     Task.ready_at <= now)
            rows = session.execute(
                select(*CANDIDATE_COLUMNS).where(*ready)
                .order_by(Task.head.desc(), Task.priority.desc(), Task.id)  # type: ignore[attr-defined]
                .limit(slots + window)).all()
            if not rows:
                continue
            queue = [_candidate(r) for r in rows]
            top = queue[0]
            seen_users = {c.user for c in queue}
            extra = []
            for user in _users_in_group(session, pool, band, top.head, top.priority):
                if user in seen_users:
                    continue
                row = session.execute(
                    select(*CANDIDATE_COLUMNS)
                    .where(*ready, Task.head == top.head, Task.priority == top.priority,
                           Task.user == user).order_by(Task.id).limit(1)).first()
                if row is not None:
                    extra.append(_candidate(row))
            if extra:
                group_end = sum(1 for c in queue
                                if (c.head, c.priority) == (top.head, top.priority))
                queue[group_end:group_end] = sorted(extra, key=lambda c: c.task_id)
            candidates[(pool, band)] = queue
        if not candidates:
            return []
        job_ids = {c.job_id for queue in candidates.values() for c in queue}
        excluded = excluded_hosts(session, job_ids) if any(w.host for w in idle) else {}
    running_by_user: dict[str, int] = {}
    tokens = dict(licence_free or {})
    for row in in_flight:
        running_by_user[row[4]] = running_by_user.get(row[4], 0) + 1
        if row[0] == TaskState.DISPATCHED:
            for name, count in licences_of(row[5]):
                tokens[name] = tokens.get(name, 0) - count
    return plan_release(idle, candidates, running_by_user, bands_high_first, last_served,
                        excluded, host_free, tokens)


def excluded_hosts(session: Session,
                   job_ids: Iterable[int] | None) -> dict[int, frozenset[str]]:
    """job id -> hosts that failed at least the job's max_host_failures of its attempts (failures
    since retried are excused); `job_ids` None: every job not finished."""
    ids = None if job_ids is None else list(job_ids)
    if ids == []:
        return {}
    which = (Job.state.notin_(FINAL_JOB_STATES) if ids is None  # type: ignore[attr-defined]
             else Task.job_id.in_(ids))  # type: ignore[attr-defined]
    rows = session.execute(
        select(Task.job_id, Attempt.host, func.count())
        .join(Task, Task.id == Attempt.task_id)  # type: ignore[arg-type]
        .join(Job, Job.id == Task.job_id)  # type: ignore[arg-type]
        .where(which, Attempt.state == AttemptState.FAILED,
               Attempt.excused.is_(False),  # type: ignore[attr-defined]
               Attempt.host.is_not(None))  # type: ignore[union-attr]
        .group_by(Task.job_id, Attempt.host, Job.max_host_failures)
        .having(func.count() >= Job.max_host_failures)).all()
    excluded: dict[int, set[str]] = {}
    for job_id, host, _count in rows:
        excluded.setdefault(job_id, set()).add(host)
    return {job_id: frozenset(hosts) for job_id, hosts in excluded.items()}


def exclusion_reason(hosts: Sequence[str], max_failures: int, pool: str, band: str) -> str:
    """Why no host may take a task: every one serving its pool and band is excluded."""
    if len(hosts) == 1:
        return (f"host {hosts[0]} is excluded from this job after {max_failures} failures; "
                f"no other host serves pool {pool} (band {band})")
    return (f"hosts {', '.join(hosts)} are excluded from this job after {max_failures} failures "
            f"each; no other host serves pool {pool} (band {band})")


def end_unservable(store: Store, workers: Iterable[IdleWorker]) -> Outcome:
    """Fail the ready tasks no live host may take, because every host serving their pool and band
    is excluded from their job; their job then ends (failed, with that reason) instead of waiting
    for ever. `retry` excuses the failures it retries and runs the tasks again.

    Only hosts of live workers count: with no worker serving a task at all, it waits (a farm
    starting, or a pool whose workers are away), and `why` says so.
    """
    live = [w for w in workers if w.host]
    if not live:
        return Outcome({"failed_tasks": 0})
    with store.read() as session:
        excluded = excluded_hosts(session, None)
        if not excluded:
            return Outcome({"failed_tasks": 0})
        groups = session.execute(
            select(Task.job_id, Task.pool, Task.band).where(
                Task.job_id.in_(list(excluded)), Task.state == TaskState.QUEUED)  # type: ignore[attr-defined]
            .distinct()).all()
    stuck = []
    for job_id, pool, band in groups:
        hosts = unservable([w for w in live if w.pool == pool and band in w.bands],
                           excluded[job_id])
        if hosts:
            stuck.append((job_id, pool, band, hosts))
    if not stuck:
        return Outcome({"failed_tasks": 0})
    emitted: list[tuple[str, dict[str, Any]]] = []
    failed = 0
    with store.write() as session:
        now = store.now(session)
        for job_id, pool, band, hosts in stuck:
            job = session.get(Job, job_id)
            if job is None:
                continue
            why = exclusion_reason(hosts, job.max_host_failures, pool, band)
            for task in session.scalars(select(Task).where(
                    Task.job_id == job_id, Task.pool == pool, Task.band == band,
                    Task.state == TaskState.QUEUED)):
                task.state, task.reason, task.finished_at = TaskState.FAILED, why, now
                _note_failure_for_good(session, task, now)
                failed += 1
                emitted.append((events.TASK_FAILED, {
                    "task_id": task.id, "job_id": job_id, "attempt": task.attempt,
                    "worker_id": None, "exit_code": None, "reason": why, "will_retry": False}))
            session.flush()
            emitted.extend(_finish_job_if_complete(session, job_id, now))
    return Outcome({"failed_tasks": failed}, emitted)


_USERS_IN_GROUP = text("""
WITH RECURSIVE users(name) AS (
    SELECT MIN("user") FROM task
     WHERE state = :state AND pool = :pool AND band = :band AND head = :head
       AND priority = :priority
    UNION ALL
    SELECT (SELECT MIN("user") FROM task
             WHERE state = :state AND pool = :pool AND band = :band AND head = :head
               AND priority = :priority AND "user" > users.name)
      FROM users WHERE users.name IS NOT NULL
)
SELECT name FROM users WHERE name IS NOT NULL LIMIT :most
""")


def _users_in_group(session: Session, pool: str, band: str, head: bool, priority: int,
                    most: int = 1000) -> list[str]:
    """Users with queued tasks at this (head, priority): a skip scan, one index probe each."""
    return list(session.execute(_USERS_IN_GROUP, {
        "state": TaskState.QUEUED.value, "pool": pool, "band": band, "head": head,
        "priority": priority, "most": most}).scalars())


def mark_dispatched(store: Store, releases: Sequence[Release]) -> None:
    """Record that these messages are in their queues (only tasks still waiting for one)."""
    if not releases:
        return
    with store.write() as session:
        now = store.now(session)
        for release in releases:
            session.execute(
                update(Task)
                .where(Task.id == release.task_id, Task.attempt == release.attempt,
                       Task.state == TaskState.QUEUED)
                .values(state=TaskState.DISPATCHED, dispatched_at=now))


def stale_dispatches(store: Store, older_than: float) -> list[Release]:
    """Messages published long ago and never claimed, oldest first."""
    with store.read() as session:
        now = store.now(session)
        rows = session.execute(
            select(Task.id, Task.attempt, Task.pool, Task.band, Task.resources, Task.preferred,
                   Task.licences)
            .where(Task.state == TaskState.DISPATCHED, Task.dispatched_at < now - older_than)
            .order_by(Task.dispatched_at).limit(1000)).all()
    return [Release(r[0], r[1], r[2], r[3], "", wants=wants_of(r[4], r[5], r[6])) for r in rows]


def dispatched_counts(store: Store) -> dict[tuple[str, str], int]:
    """(pool, band) -> tasks whose message should be waiting in that queue."""
    with store.read() as session:
        rows = session.execute(
            select(Task.pool, Task.band, func.count()).where(Task.state == TaskState.DISPATCHED)
            .group_by(Task.pool, Task.band)).all()
    return {(pool, band): count for pool, band, count in rows}


def touch_dispatched(store: Store, releases: Sequence[Release]) -> None:
    """Restart the unclaimed-message clock of tasks whose messages were just checked or resent."""
    if not releases:
        return
    with store.write() as session:
        now = store.now(session)
        session.execute(update(Task).where(Task.id.in_([r.task_id for r in releases]),  # type: ignore[attr-defined]
                                           Task.state == TaskState.DISPATCHED)
                        .values(dispatched_at=now))


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


def expire_leases(store: Store) -> list[dict[str, Any]]:
    """Put every task whose lease ran out back at the head of its band; return what was lost."""
    with store.write() as session:
        now = store.now(session)
        tasks = session.scalars(select(Task).where(
            Task.state == TaskState.RUNNING, Task.lease_expires_at < now).limit(1000)).all()
        lost = []
        for task in tasks:
            lost.append({"task_id": task.id, "worker_id": task.worker_id, "attempt": task.attempt})
            _requeue_at_head(session, task, AttemptState.LOST,
                             f"lease expired: worker {task.worker_id} stopped reporting", now)
    return lost


def extend_all_leases(store: Store, lease_seconds: float) -> int:
    """At start-up, give running tasks one lease of grace to report in after our downtime."""
    with store.write() as session:
        now = store.now(session)
        return int(session.execute(
            update(Task).where(Task.state == TaskState.RUNNING)
            .values(lease_expires_at=now + lease_seconds)).rowcount)


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

def _name_like(name_pattern: str) -> Any:
    """A job-name condition from a glob like `shot01*` (`?` is one character)."""
    like = (name_pattern.replace("\\", "\\\\").replace("%", "\\%")
            .replace("_", "\\_").replace("*", "%").replace("?", "_"))
    return Job.name.like(like, escape="\\")  # type: ignore[attr-defined]


def select_jobs(store: Store, user: str | None = None, state: str | None = None,
                name_pattern: str | None = None, job_ids: Sequence[int] | None = None) -> list[int]:
    """Ids of the jobs a bulk operation applies to; `name_pattern` is a glob like `shot01*`."""
    if not (user or state or name_pattern or job_ids):
        raise InvalidState("a bulk operation needs a filter: user, state, name pattern or ids")
    _check_job_state(state)
    with store.read() as session:
        query = select(Job.id)
        if job_ids:
            query = query.where(Job.id.in_(list(job_ids)))  # type: ignore[union-attr]
        if user:
            query = query.where(Job.user == user)
        if state:
            query = query.where(Job.state == state)
        if name_pattern:
            query = query.where(_name_like(name_pattern))
        return [job_id for job_id in session.scalars(query.order_by(Job.id)) if job_id]


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


# --- why ------------------------------------------------------------------------------------------

def why_task(store: Store, task_id: int, workers: Iterable[IdleWorker],
             hosts: Mapping[str, Mapping[str, Amounts]] | None = None,
             licences: Mapping[str, Mapping[str, int]] | None = None,
             held: Iterable[tuple[IdleWorker, str]] = ()) -> dict[str, Any]:
    """Why a task is where it is: a reason a person can read and a code a program can.

    `workers` are the live workers the release pass may give tasks to; `held` those it may not
    (drained, disabled, stopping: shared.worker_control), each with what is wanted of it.

    `hosts` maps each host to its "totals" and "free" amounts, as the negotiator reports them;
    `licences` each licence pool to its "total" and "free" tokens, as the licence service does
    (None: it has not answered).
    """
    with store.read() as session:
        now = store.now(session)
        task = _get_task(session, task_id)
        answer = {"task_id": task_id, "state": task.state}
        if task.state == TaskState.WAITING:
            unmet = unmet_dependencies(session, task)
            return {**answer, "code": "dependency",
                    "reason": "waiting for " + "; ".join(unmet) if unmet
                    else "its dependencies are done; it is about to be queued"}
        if task.state == TaskState.QUEUED:
            if task.ready_at > now and task.licence_refusals:
                return {**answer, "code": "licence_refused",
                        "refusals": task.licence_refusals,
                        "reason": f"{task.reason}; runs again in {task.ready_at - now:.0f} s"}
            if task.ready_at > now:
                return {**answer, "code": "retry_delay",
                        "reason": f"retrying in {task.ready_at - now:.0f} s"}
            serving = [w for w in workers if w.pool == task.pool and task.band in w.bands]
            if not serving:
                kept = sorted((w.worker_id, wanted) for w, wanted in held
                              if w.pool == task.pool and task.band in w.bands)
                if kept:
                    return {**answer, "code": "workers_held",
                            "workers": {worker_id: wanted for worker_id, wanted in kept},
                            "reason": held_reason(kept, task.pool, task.band)}
                return {**answer, "code": "no_worker",
                        "reason": f"no worker serves pool {task.pool}, band {task.band}"}
            # The release pass's own rule (dispatch.can_serve): never a host excluded from the job.
            barred = excluded_hosts(session, [task.job_id]).get(task.job_id, frozenset())
            lost = unservable(serving, barred)
            if lost:
                job = _get_job(session, task.job_id)
                return {**answer, "code": "host_excluded", "hosts": lost,
                        "reason": exclusion_reason(lost, job.max_host_failures, task.pool,
                                                   task.band)}
            serving = [w for w in serving if w.host not in barred]
            needs = needs_of(task.resources)
            known = {host: view for host, view in (hosts or {}).items()
                     if host in {w.host for w in serving}}
            if known and needs != (0.0, 0, 0):
                wanted = (f"{needs[0]:g} cores / {needs[1] / 1024:g} GB"
                          + (f" / {needs[2]} GPUs" if needs[2] else ""))
                if not any(fits(view["totals"], needs) for view in known.values()):
                    return {**answer, "code": "no_host_fits",
                            "reason": f"no host with >= {wanted} serves pool {task.pool}"}
                if not any(fits(view["free"], needs) for view in known.values()):
                    return {**answer, "code": "no_room",
                            "reason": f"waiting for a host with {wanted} free"}
            short = _licence_shortage(licences_of(task.licences), licences)
            if short is not None:
                return {**answer, **short}
            same_head = Task.head.is_(True) if task.head else Task.head.is_(False)  # type: ignore[attr-defined]
            before = [and_(same_head, Task.priority > task.priority),
                      and_(same_head, Task.priority == task.priority,
                           Task.id < task.id)]  # type: ignore[operator]
            if not task.head:
                before.append(Task.head.is_(True))  # type: ignore[attr-defined]
            ahead = session.scalar(select(func.count()).where(
                Task.state == TaskState.QUEUED, Task.pool == task.pool, Task.band == task.band,
                or_(*before)))
            return {**answer, "code": "queued", "position": int(ahead or 0) + 1,
                    "reason": f"position {int(ahead or 0) + 1} in band {task.band} of pool "
                              f"{task.pool}; {len(serving)} workers serve it, all busy"}
        if task.state == TaskState.PAUSED:
            return {**answer, "code": "paused", "reason": f"job {task.job_id} is paused"}
        if task.state == TaskState.DISPATCHED:
            return {**answer, "code": "dispatched",
                    "reason": f"sent to corral.{task.pool}.{task.band}; a worker is taking it"}
        if task.state == TaskState.RUNNING:
            return {**answer, "code": "running",
                    "reason": f"running on {task.worker_id} ({task.progress}%)"}
        return {**answer, "code": task.state, "reason": task.reason or str(task.state)}


def held_reason(held: Sequence[tuple[str, str]], pool: str, band: str) -> str:
    """Why a task waits when every worker serving its pool and band is drained, disabled or
    stopping (held: each worker's id and what is wanted of it)."""
    named = ", ".join(f"{worker_id} ({WANTED_WORDS.get(wanted, wanted)})"
                      for worker_id, wanted in held)
    return (f"every worker serving pool {pool}, band {band} is drained, disabled or stopping: "
            f"{named}; `corral worker enable` gives it work again")


WANTED_WORDS = {"drain": "drained", "disable": "disabled", "stop": "stopping",
                "stop-now": "stopping"}


def _licence_shortage(needs: Licences,
                      pools: Mapping[str, Mapping[str, int]] | None) -> dict[str, Any] | None:
    """The first licence a task cannot have now, as a why-answer's code and reason."""
    if not needs:
        return None
    if pools is None:
        return {"code": "licence_unavailable",
                "reason": "the licence service has not answered; tasks needing licences wait"}
    for name, count in needs:
        pool = pools.get(name)
        if pool is None:
            return {"code": "licence_unknown", "licence": name,
                    "reason": f"no licence pool named {name} (corral licences set {name} N)"}
        if pool["total"] < count:
            return {"code": "licence_too_few", "licence": name,
                    "reason": f"needs {count} {name} licences; the pool has only "
                              f"{pool['total']}"}
        if pool["free"] < count:
            in_use = pool["total"] - pool["free"]
            return {"code": "licence_exhausted", "licence": name,
                    "reason": f"licence {name} exhausted ({in_use} of {pool['total']} in use, "
                              f"needs {count})"}
    return None


# --- reads --------------------------------------------------------------------------------------

TASK_SUMMARY_FIELDS = ("id", "index", "name", "layer", "state", "progress", "attempt",
                       "frame_start", "frame_end", "priority", "started_at", "finished_at",
                       "reason")
"""Fields a caller may ask `get_job` for alone (`task_fields`), for a grid of many tasks."""


def get_job(store: Store, job_id: int, task_limit: int = 1000, task_offset: int = 0,
            task_fields: Sequence[str] | None = None) -> dict[str, Any]:
    """A job with its counts by state and a page of its tasks (task_limit 0: counts only);
    with `task_fields` (some of TASK_SUMMARY_FIELDS) each task has only those."""
    with store.read() as session:
        job = _get_job(session, job_id)
        counts = job_counts(session, [job_id])[job_id]
        data = _job_dict(job, counts)
        running = session.execute(select(Task.progress, Task.started_at).where(
            Task.job_id == job_id, Task.state == TaskState.RUNNING)).all()
        # Tasks done, plus the running ones' own progress: what a progress bar shows (failed
        # and cancelled tasks are not progress).
        data["completed"] = round(counts.get(TaskState.DONE, 0)
                                  + sum(row[0] for row in running) / 100, 2)
        data["eta_seconds"] = _eta(session, job_id, counts, running, store.now(session))
        data["notifications"] = notifications.deliveries_of_job(session, job_id)
        if task_limit > 0 and task_fields:
            columns = [getattr(Task, name) for name in task_fields]
            rows = session.execute(select(*columns).where(col(Task.job_id) == job_id)
                                   .order_by(col(Task.index)).offset(task_offset)
                                   .limit(task_limit)).all()
            data["tasks"] = [dict(zip(task_fields, row, strict=True)) for row in rows]
        elif task_limit > 0:
            tasks = session.scalars(select(Task).where(Task.job_id == job_id)
                                    .order_by(Task.index).offset(task_offset)  # type: ignore[arg-type]
                                    .limit(task_limit)).all()
            data["tasks"] = [_task_dict(t) for t in tasks]
        return data


def _eta(session: Session, job_id: int, counts: dict[str, int],
         running: Sequence[Any] = (), now: float = 0.0) -> float | None:
    """Seconds left, from the finished tasks' mean run time (or, before any has finished, the
    running tasks' pace so far) and how many run at once now."""
    left = sum(counts.get(state, 0) for state in (*WAITING_TASK_STATES, TaskState.DISPATCHED,
                                                  TaskState.RUNNING))
    if not left:
        return 0.0 if counts else None
    mean = session.scalar(
        select(func.avg(Attempt.process_ended_at - Attempt.process_started_at))
        .join(Task, Task.id == Attempt.task_id)  # type: ignore[arg-type]
        .where(Task.job_id == job_id, Attempt.state == AttemptState.DONE))
    if mean is None:
        paces = [(now - started) * 100 / progress for progress, started in running
                 if progress and started is not None and now > started]
        if not paces:
            return None
        mean = sum(paces) / len(paces)
    work_left = left - sum(progress for progress, _ in running) / 100
    return round(float(mean) * work_left / max(1, counts.get(TaskState.RUNNING, 0)), 1)


def get_task(store: Store, task_id: int) -> dict[str, Any]:
    with store.read() as session:
        task = _get_task(session, task_id)
        attempts = session.scalars(select(Attempt).where(Attempt.task_id == task_id)
                                   .order_by(Attempt.id)).all()  # type: ignore[arg-type]
        data = _task_dict(task)
        data["attempts"] = [a.model_dump(mode="json", exclude={"lease_token"}) for a in attempts]
        return data


def _check_job_state(state: str | None) -> None:
    """A filter naming no job state would match nothing, silently: refuse it."""
    if state is not None and state not in set(JobState):
        raise InvalidState(f"state: {state!r} is not a job state "
                           f"({', '.join(s.value for s in JobState)})")


def list_jobs(store: Store, state: str | None = None, user: str | None = None, page: int = 1,
              page_size: int = 50, name_pattern: str | None = None) -> dict[str, Any]:
    if page < 1 or not 1 <= page_size <= 1000:
        raise InvalidState("page must be >= 1 and page_size between 1 and 1000")
    _check_job_state(state)
    with store.read() as session:
        query = select(Job)
        if state:
            query = query.where(Job.state == state)
        if user:
            query = query.where(Job.user == user)
        if name_pattern:
            query = query.where(_name_like(name_pattern))
        total = session.scalar(select(func.count()).select_from(query.subquery()))
        jobs = session.scalars(query.order_by(Job.id.desc())  # type: ignore[union-attr]
                               .offset((page - 1) * page_size).limit(page_size)).all()
        counts = job_counts(session, [j.id for j in jobs if j.id is not None])
        listed = []
        for job in jobs:
            if job.id is not None:
                listed.append({**_job_dict(job, counts[job.id]),
                               "eta_seconds": _eta(session, job.id, counts[job.id])})
        return {"jobs": listed, "total": total, "page": page, "page_size": page_size}


def running_on_workers(store: Store) -> dict[str, int]:
    """worker id -> task id, for every running task."""
    with store.read() as session:
        rows = session.execute(select(Task.worker_id, Task.id).where(
            Task.state == TaskState.RUNNING)).all()
    return {worker: task for worker, task in rows if worker}


# --- the audit log (shared.audit) ---------------------------------------------------------------

AUDIT = audit.audit_table(SchedulerTable.metadata, "scheduler")
"""What was done to jobs and tasks, by whom, when and from where."""
