"""The registry's own tables (workers, service heartbeats) and their state changes, without nameko."""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel, col

from shared import audit, events
from shared.db import Store
from shared.errors import InvalidArgument
from shared.heartbeat import Heartbeat
from shared.worker_control import EVERY_WORKER, Wanted

log = logging.getLogger(__name__)

Emitted = list[tuple[str, dict[str, Any]]]


class RegistryTable(SQLModel, registry=registry()):
    """Base of the registry's tables: their own metadata, in the registry's database."""


class WorkerState(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"    # running its last task: drained, disabled or stopping
    DRAINED = "drained"      # drained: takes nothing until enabled
    DISABLED = "disabled"    # disabled: takes nothing until enabled
    LOST = "lost"
    LEFT = "left"


ALIVE_STATES = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING, WorkerState.DRAINED,
                WorkerState.DISABLED)


class Worker(RegistryTable, table=True):
    worker_id: str = Field(primary_key=True)
    host: str = Field(index=True)
    pool: str = Field(index=True)
    bands: str  # JSON list of band names
    pid: int | None = None
    state: str = Field(default=WorkerState.IDLE, index=True)
    current_task: int | None = None
    started_at: float
    last_seen: float
    left_at: float | None = None
    # Its identity across restarts, with its host (shared.worker_control).
    name: str | None = None
    # A stop asked of this process only (Wanted.STOP or STOP_NOW); a restart takes work again.
    stop: str | None = None


class WorkerControl(RegistryTable, table=True):
    """A drain or disable kept against a worker's host and name (or every worker of the host,
    name EVERY_WORKER), until it is enabled."""

    host: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    wanted: str
    set_by: str
    set_at: float


class ServiceInstance(RegistryTable, table=True):
    service: str = Field(primary_key=True)
    host: str = Field(primary_key=True)
    started_at: float
    last_seen: float


def identity_of(worker: Worker) -> tuple[str, str]:
    """The (host, name) a worker's kept wanted state is filed under (a worker too old to send a
    name is known by its id alone)."""
    return worker.host, worker.name or worker.worker_id


Controls = dict[tuple[str, str], str]
"""Every drain or disable kept, read at once: (host, name) -> wanted (see all_controls)."""


def all_controls(session: Any) -> Controls:
    """Every kept control in one query, for answers about many workers at once."""
    return {(c.host, c.name): c.wanted for c in session.scalars(select(WorkerControl))}


def _kept(session: Any, key: tuple[str, str], controls: Controls | None) -> str | None:
    if controls is not None:
        return controls.get(key)
    control = session.get(WorkerControl, key)
    return None if control is None else str(control.wanted)


def wanted_state(session: Any, worker: Worker, controls: Controls | None = None) -> Wanted:
    """What is wanted of this worker now: its own stop, else its identity's control, else its
    host's, else active (from `controls` when they were read already)."""
    if worker.stop:
        return Wanted(worker.stop)
    kept = (_kept(session, identity_of(worker), controls)
            or _kept(session, (worker.host, EVERY_WORKER), controls))
    return Wanted(kept) if kept is not None else Wanted.ACTIVE


def host_wanted(session: Any, host: str, controls: Controls | None = None) -> Wanted | None:
    """The drain or disable kept for a whole host, if any."""
    kept = _kept(session, (host, EVERY_WORKER), controls)
    return Wanted(kept) if kept is not None else None


def worker_dict(worker: Worker, now: float | None = None,
                wanted: Wanted = Wanted.ACTIVE, session: Any = None,
                controls: Controls | None = None) -> dict[str, Any]:
    """A worker as the registry answers; with `session`, what is wanted of its host too
    (`host_wanted`: a pool starts no worker on a drained or disabled host)."""
    data = worker.model_dump(mode="json", exclude={"stop"})
    data["bands"] = json.loads(worker.bands)
    data["name"] = identity_of(worker)[1]
    data["wanted"] = str(wanted)
    if session is not None:
        held = host_wanted(session, worker.host, controls)
        data["host_wanted"] = None if held is None else str(held)
    if now is not None:
        data["seen_seconds_ago"] = round(max(0.0, now - worker.last_seen), 3)
    return data


def _joined(worker: Worker, wanted: Wanted) -> tuple[str, dict[str, Any]]:
    return (events.WORKER_JOINED, {"worker_id": worker.worker_id, "host": worker.host,
                                   "pool": worker.pool, "bands": json.loads(worker.bands),
                                   "wanted": str(wanted)})


def _check_name(name: str | None) -> None:
    if name == EVERY_WORKER:
        raise InvalidArgument(f"name: {EVERY_WORKER!r} stands for every worker of a host; "
                              "choose another name")


def _record_join(session: Any, now: float, worker: Worker | None, worker_id: str, host: str,
                 pool: str, bands: list[str], pid: int | None, name: str | None) -> Worker:
    """The worker's row as it (re)joins: added, or taken back to idle with what it says now."""
    if worker is None:
        worker = Worker(worker_id=worker_id, host=host, pool=pool, bands=json.dumps(bands),
                        pid=pid, started_at=now, last_seen=now, name=name)
        session.add(worker)
    else:
        worker.host, worker.pool, worker.bands, worker.pid = host, pool, json.dumps(bands), pid
        worker.state, worker.last_seen, worker.left_at = WorkerState.IDLE, now, None
        worker.name = name
    return worker


def register_worker(store: Store, worker_id: str, host: str, pool: str, bands: list[str],
                    pid: int | None, name: str | None = None) -> tuple[dict[str, Any], Emitted]:
    """Record a worker joining; the reply says what is wanted of it (kept across restarts)."""
    _check_name(name)
    with store.write() as session:
        now = store.now(session)
        worker = _record_join(session, now, session.get(Worker, worker_id), worker_id, host,
                              pool, bands, pid, name)
        wanted = wanted_state(session, worker)
        return worker_dict(worker, now, wanted), [_joined(worker, wanted)]


def _record_beat(worker: Worker, now: float, state: str, current_task: int | None,
                 wanted: Wanted) -> Emitted:
    """A heartbeat on a known worker's row; a worker we had given up on comes back (and says so)."""
    if state not in ALIVE_STATES:
        state = WorkerState.BUSY if current_task else WorkerState.IDLE
    emitted: Emitted = []
    if worker.state in (WorkerState.LOST, WorkerState.LEFT):
        emitted.append(_joined(worker, wanted))
        worker.left_at = None
    worker.state, worker.current_task, worker.last_seen = state, current_task, now
    return emitted


def worker_heartbeat(store: Store, worker_id: str, state: str,
                     current_task: int | None) -> tuple[dict[str, Any], Emitted]:
    """Record a heartbeat (the `worker_heartbeat` RPC); an unknown worker is asked to register.

    The reply says what is wanted of the worker (`wanted`, a shared.worker_control.Wanted).
    """
    with store.write() as session:
        now = store.now(session)
        worker = session.get(Worker, worker_id)
        if worker is None:
            return {"known": False}, []
        wanted = wanted_state(session, worker)
        emitted = _record_beat(worker, now, state, current_task, wanted)
        return {"known": True, "wanted": str(wanted)}, emitted


def apply_heartbeats(store: Store, beats: list[Heartbeat]) -> Emitted:
    """Record many published heartbeats (shared.heartbeat) in one transaction.

    Each worker's last heartbeat of the batch counts. A worker the registry has no row of joins
    from its heartbeat; one that left is not brought back (its last heartbeat can arrive after
    it said goodbye). Workers that obey something else than what is wanted of them (they missed
    a `worker_controlled` event) are told again, in one `worker_controlled` event.
    """
    last = {beat.worker_id: beat for beat in beats}
    emitted: Emitted = []
    mistaken: dict[str, str] = {}
    with store.write() as session:
        now = store.now(session)
        rows = {w.worker_id: w for w in session.scalars(
            select(Worker).where(col(Worker.worker_id).in_(list(last))))}
        controls = all_controls(session)
        for worker_id, beat in last.items():
            worker = rows.get(worker_id)
            if worker is not None and worker.state == WorkerState.LEFT:
                continue
            joining = worker is None
            if worker is None:
                if beat.name == EVERY_WORKER:
                    log.warning("heartbeat of %s refused: its name %r is reserved", worker_id,
                                beat.name)
                    continue
                worker = _record_join(session, now, None, worker_id, beat.host, beat.pool,
                                      list(beat.bands), beat.pid, beat.name)
            wanted = wanted_state(session, worker, controls)
            if joining:
                emitted.append(_joined(worker, wanted))
            emitted += _record_beat(worker, now, beat.state, beat.current_task, wanted)
            if wanted is not beat.wanted:
                mistaken[worker_id] = str(wanted)
    if mistaken:
        emitted.append((events.WORKER_CONTROLLED, {"workers": mistaken}))
    return emitted


def leave_worker(store: Store, worker_id: str) -> tuple[dict[str, Any], Emitted]:
    with store.write() as session:
        now = store.now(session)
        worker = session.get(Worker, worker_id)
        if worker is None or worker.state == WorkerState.LEFT:
            return {"worker_id": worker_id, "state": WorkerState.LEFT}, []
        worker.state, worker.left_at, worker.current_task = WorkerState.LEFT, now, None
        left = (events.WORKER_LEFT, {"worker_id": worker_id})
        return worker_dict(worker, now, wanted_state(session, worker)), [left]


def mark_lost_workers(store: Store, lost_after: float, unheard_seconds: float = 0.0) -> Emitted:
    """Workers silent for longer than `lost_after` seconds are lost.

    `unheard_seconds`: how far behind the registry is with the heartbeats waiting in its queue
    (services.registry.heartbeat_intake); that time is not counted as anyone's silence.
    """
    with store.write() as session:
        now = store.now(session)
        silent = session.scalars(select(Worker).where(
            col(Worker.state).in_(ALIVE_STATES),
            col(Worker.last_seen) < now - max(0.0, unheard_seconds) - lost_after)).all()
        emitted: Emitted = []
        for worker in silent:
            worker.state = WorkerState.LOST
            emitted.append((events.WORKER_LOST, {"worker_id": worker.worker_id,
                                                 "host": worker.host,
                                                 "current_task": worker.current_task}))
        return emitted


def list_workers(store: Store, alive: bool = False, pool: str | None = None) -> list[dict[str, Any]]:
    with store.read() as session:
        now = store.now(session)
        query = select(Worker)
        if alive:
            query = query.where(col(Worker.state).in_(ALIVE_STATES))
        if pool:
            query = query.where(col(Worker.pool) == pool)
        workers = session.scalars(query.order_by(Worker.host, Worker.worker_id)).all()
        controls = all_controls(session)  # one query, not three per worker
        return [worker_dict(w, now, wanted_state(session, w, controls), session, controls)
                for w in workers]


def worker_summary(store: Store) -> tuple[dict[str, int], set[str], list[str]]:
    """Workers by state, the pools any worker serves, and the hosts with a live worker: the
    farm overview's figures, counted by the database rather than read worker by worker."""
    with store.read() as session:
        rows = session.execute(select(col(Worker.state), col(Worker.pool), col(Worker.host),
                                      func.count()).group_by(col(Worker.state), col(Worker.pool),
                                                             col(Worker.host))).all()
    by_state: dict[str, int] = {}
    for state, _pool, _host, count in rows:
        by_state[str(state)] = by_state.get(str(state), 0) + int(count)
    pools = {str(pool) for _state, pool, _host, _count in rows}
    hosts = sorted({str(host) for state, _pool, host, _count in rows if state in ALIVE_STATES})
    return by_state, pools, hosts


def service_heartbeat(store: Store, service: str, host: str) -> None:
    with store.write() as session:
        now = store.now(session)
        instance = session.get(ServiceInstance, (service, host))
        if instance is None:
            session.add(ServiceInstance(service=service, host=host, started_at=now, last_seen=now))
        else:
            instance.last_seen = now


def list_services(store: Store, alive_within: float) -> list[dict[str, Any]]:
    with store.read() as session:
        now = store.now(session)
        rows = session.scalars(select(ServiceInstance).order_by(ServiceInstance.service)).all()
        return [{**row.model_dump(mode="json"), "alive": now - row.last_seen <= alive_within,
                 "seen_seconds_ago": round(now - row.last_seen, 3)} for row in rows]


# --- the audit log (shared.audit) ---------------------------------------------------------------

AUDIT = audit.audit_table(RegistryTable.metadata, "registry")
"""What was done to accounts, tokens and workers, by whom, when and from where."""
# --- forgetting: workers gone long ago, when the cleanup service asks ------------------------------

def forget_workers(store: Store, gone_for_seconds: float) -> dict[str, Any]:
    """Delete workers that left or were lost more than `gone_for_seconds` ago.

    Returns the workers forgotten and the hosts that still have a live worker (the negotiator
    keeps those hosts whatever their age).
    """
    with store.write() as session:
        now = store.now(session)
        cutoff = now - max(0.0, float(gone_for_seconds))
        gone = session.scalars(select(Worker).where(
            Worker.state.in_((WorkerState.LEFT, WorkerState.LOST)),  # type: ignore[attr-defined]
            func.coalesce(Worker.left_at, Worker.last_seen) < cutoff)).all()
        forgotten = [worker.worker_id for worker in gone]
        for worker in gone:
            session.delete(worker)
        live_hosts = sorted(set(session.scalars(select(col(Worker.host)).where(
            col(Worker.state).in_(ALIVE_STATES)))))
    return {"forgotten": forgotten, "live_hosts": live_hosts}
