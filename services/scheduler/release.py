"""The release pass's reads and marks: tasks for idle workers, excluded hosts, dispatched messages."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from services.scheduler.dispatch import (
    Amounts,
    Candidate,
    IdleWorker,
    Licences,
    Release,
    absorb_dispatched,
    plan_release,
    unservable,
    wanted_queues,
)
from services.scheduler.models import (
    FINAL_JOB_STATES,
    Attempt,
    AttemptState,
    Job,
    Outcome,
    Task,
    TaskState,
)
from services.scheduler.readiness import (
    _finish_job_if_complete,
    _note_failure_for_good,
)
from shared import events
from shared.db import Store

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


def last_served(store: Store) -> dict[str, float]:
    """When each user with tasks dispatched or running had one released last (its dispatch
    time): fairness's tie-break as the farm's record has it, for a scheduler that takes over."""
    with store.read() as session:
        rows = session.execute(
            select(Task.user, func.max(Task.dispatched_at))
            .where(Task.state.in_([TaskState.DISPATCHED, TaskState.RUNNING]),  # type: ignore[attr-defined]
                   Task.dispatched_at.is_not(None))  # type: ignore[union-attr]
            .group_by(Task.user)).all()
    return {user: float(at) for user, at in rows}


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
