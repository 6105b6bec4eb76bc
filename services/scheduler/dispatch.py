"""Which queued tasks to release to which idle workers: band, priority, fairness, age (no I/O)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Amounts = tuple[float, int, int]
"""(cores, memory in MB, GPUs): what placement compares; custom resources are the negotiator's."""


def fits(free: Amounts, needs: Amounts) -> bool:
    return all(have >= want for have, want in zip(free, needs, strict=True))


def take(free: Amounts, needs: Amounts) -> Amounts:
    return (free[0] - needs[0], free[1] - needs[1], free[2] - needs[2])


Licences = tuple[tuple[str, int], ...]
"""(licence name, count) pairs a task needs, sorted by name."""


def licences_free(free: Mapping[str, int], needs: Licences) -> bool:
    """Whether every licence a task needs has enough tokens free (an unknown one has none)."""
    return all(free.get(name, 0) >= count for name, count in needs)


@dataclass(frozen=True)
class IdleWorker:
    """A live worker with nothing running, as the scheduler sees it."""

    worker_id: str
    pool: str
    bands: frozenset[str]
    host: str = ""


@dataclass(frozen=True)
class Candidate:
    """A ready task, in the order the store returned it (head, then priority, then age)."""

    task_id: int
    attempt: int
    user: str
    priority: int
    head: bool
    job_id: int = 0
    needs: Amounts = (0.0, 0, 0)
    wants: str | None = None  # JSON the task's message carries: see Release.wants
    licences: Licences = ()


@dataclass(frozen=True)
class Release:
    """One decision: publish this task's message to its pool and band queue."""

    task_id: int
    attempt: int
    pool: str
    band: str
    worker_id: str
    user: str = ""
    # JSON object of what the worker books before running the task ({"resources", "preferred",
    # "licences"}), carried in the message so it books while its claim is on the way; None:
    # nothing to book.
    wants: str | None = None


def absorb_dispatched(idle: Sequence[IdleWorker],
                      dispatched: Iterable[tuple[str, str]]) -> list[IdleWorker]:
    """Idle workers left once every message already in a queue has been matched to one.

    A message waiting in corral.cpu.normal will be taken by some idle worker serving that band,
    so that worker's capacity is already spoken for. Specialists (fewest bands) absorb first,
    which keeps generalists free for the other bands.
    """
    free = list(idle)
    for pool, band in dispatched:
        servers = [w for w in free if w.pool == pool and band in w.bands]
        if servers:
            free.remove(min(servers, key=lambda w: (len(w.bands), w.worker_id)))
    return free


def choose_next(queue: Sequence[Candidate], running_by_user: Mapping[str, int],
                last_served: Mapping[str, float] | None = None) -> Candidate:
    """Among the tasks sharing the best (head, priority), the oldest of the least-served user.

    Least served is fewest running tasks (pyLoadBalancer's rule); between users running as
    many, the one served longest ago goes first, so one free worker alternates between users
    instead of draining the first user's backlog.
    """
    served = last_served or {}
    best = (queue[0].head, queue[0].priority)
    group = [c for c in queue if (c.head, c.priority) == best]
    return min(group, key=lambda c: (running_by_user.get(c.user, 0),
                                     served.get(c.user, float("-inf")), c.task_id))


def can_serve(worker: IdleWorker, barred: frozenset[str], room: Mapping[str, Amounts],
              needs: Amounts) -> bool:
    """Whether `worker` may take a task: its host is not excluded from the task's job, and has
    room for it (`room`: hosts' free amounts; a host not in it is not limited)."""
    return worker.host not in barred and (worker.host not in room or fits(room[worker.host], needs))


def unservable(serving: Iterable[IdleWorker], barred: frozenset[str]) -> list[str]:
    """The excluded hosts, sorted, when every worker serving a task is on one of them (and some
    worker serves it); [] while any serving worker's host may still take the task."""
    hosts = {worker.host for worker in serving}
    return sorted(hosts) if hosts and hosts <= barred else []


def plan_release(idle: Sequence[IdleWorker],
                 candidates: Mapping[tuple[str, str], Sequence[Candidate]],
                 running_by_user: Mapping[str, int],
                 bands_high_first: Sequence[str],
                 last_served: Mapping[str, float] | None = None,
                 excluded_hosts: Mapping[int, frozenset[str]] | None = None,
                 host_free: Mapping[str, Amounts] | None = None,
                 licence_free: Mapping[str, int] | None = None) -> list[Release]:
    """Match ready tasks to idle workers: highest band first, one task per idle worker.

    A task goes only to a worker whose host has room for it (`host_free`, from the negotiator;
    a host it has not heard of is not limited), never to a host excluded from its job
    (Deadline's bad-worker list), and only while the licences it needs have tokens free
    (`licence_free`, from the licence service; a licence it has not heard of has none). A task
    that cannot go now is passed over, so it never holds back other tasks behind it.
    """
    excluded = excluded_hosts or {}
    room = dict(host_free or {})
    tokens = dict(licence_free or {})
    running: Counter[str] = Counter(running_by_user)
    served = dict(last_served or {})
    clock = max(served.values(), default=0.0)
    releases: list[Release] = []
    for pool in sorted({w.pool for w in idle}):
        free = [w for w in idle if w.pool == pool]
        for band in bands_high_first:
            queue = list(candidates.get((pool, band), ()))
            while queue:
                servers = [w for w in free if band in w.bands]
                if not servers:
                    break
                pick = choose_next(queue, running, served)
                queue.remove(pick)
                if pick.licences and not licences_free(tokens, pick.licences):
                    continue
                barred = excluded.get(pick.job_id, frozenset())
                eligible = [w for w in servers if can_serve(w, barred, room, pick.needs)]
                if not eligible:
                    continue
                worker = min(eligible, key=lambda w: (len(w.bands), w.worker_id))
                if worker.host in room:
                    room[worker.host] = take(room[worker.host], pick.needs)
                for name, count in pick.licences:
                    tokens[name] -= count
                free.remove(worker)
                running[pick.user] += 1
                clock += 1
                served[pick.user] = clock
                releases.append(Release(pick.task_id, pick.attempt, pool, band, worker.worker_id,
                                        pick.user, pick.wants))
    return releases


def wanted_queues(idle: Sequence[IdleWorker]) -> dict[tuple[str, str], int]:
    """How many idle workers could take a task from each (pool, band): the candidate fetch size."""
    wanted: Counter[tuple[str, str]] = Counter()
    for worker in idle:
        for band in worker.bands:
            wanted[(worker.pool, band)] += 1
    return dict(wanted)


def should_retry(failures: int, max_attempts: int, exit_code: int | None,
                 retry_exit_codes: Sequence[int] | None) -> bool:
    """Whether a failed attempt is tried again under its retry policy."""
    if failures >= max_attempts:
        return False
    if retry_exit_codes is None:
        return True
    return exit_code is not None and exit_code in retry_exit_codes
