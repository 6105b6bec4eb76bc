"""Reads of the scheduler's tables: a job, a task, the job list, bulk selections, and why a task waits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from services.scheduler import notifications
from services.scheduler.dispatch import (
    Amounts,
    IdleWorker,
    Licences,
    fits,
    unservable,
)
from services.scheduler.models import (
    WAITING_TASK_STATES,
    Attempt,
    AttemptState,
    Job,
    JobState,
    Task,
    TaskState,
    _get_job,
    _get_task,
    _job_dict,
    _task_dict,
    job_counts,
)
from services.scheduler.readiness import unmet_dependencies
from services.scheduler.release import (
    excluded_hosts,
    exclusion_reason,
    licences_of,
    needs_of,
)
from shared.db import Store
from shared.errors import InvalidState

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


# --- a bulk operation's jobs --------------------------------------------------------------------

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
