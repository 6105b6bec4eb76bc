"""The resource negotiator's own tables (host totals, reservations) and their changes, without nameko.

There is no ledger kept in memory between calls. `reserve` locks the host (its row on
PostgreSQL, the database's write lock on SQLite), reads that host's totals and reservations,
decides with a `HostLedger` rebuilt from those rows, and inserts the new reservation, all in one
write transaction; so no other reservation can come between the check and the booking, whichever
process or green thread makes it. Because every reservation is
committed in the transaction that granted it, a negotiator that restarts (or is killed at any
moment) reads back exactly what was promised: no start-up rebuild is needed, and there is no
window in which a host could be booked twice. `ledger` rebuilds the whole picture the same way for
reads.

Amounts cross RPC as plain dicts `{cores, memory_mb, gpus, custom}`; `resources_from_wire` and
`resources_to_wire` convert them. Every change is safe to run twice: a reservation id already held
gets the same reservation back, and releasing what is no longer held does nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, registry
from sqlmodel import Field, SQLModel, col

from services.common.holdings import attempts_ended_before
from shared import audit
from shared.db import Store
from shared.errors import InvalidSpec
from shared.resources import NO_RESOURCES, GpuInfo, HostLedger, HostTotals, Reservation, Resources

AMOUNT_KEYS = ("cores", "memory_mb", "gpus", "custom")
GPU_KEYS = ("index", "model", "memory_mb")


class NegotiatorTable(SQLModel, registry=registry()):
    """Base of the negotiator's tables: their own metadata, in the negotiator's database."""


class HostRecord(NegotiatorTable, table=True):
    """What a host has to give, as it last reported in."""

    __tablename__ = "host"

    host: str = Field(primary_key=True)
    cores: float
    memory_mb: int
    gpus: str  # JSON list of {index, model, memory_mb}
    custom: str  # JSON object: name -> amount
    reported_at: float


class ReservationRecord(NegotiatorTable, table=True):
    """What one task attempt, run by one worker, holds on one host."""

    __tablename__ = "reservation"

    id: str = Field(primary_key=True)
    host: str = Field(index=True)
    worker_id: str = Field(index=True)
    task_id: int = Field(index=True)
    attempt: int
    cores: float
    memory_mb: int
    gpus: int
    gpu_indices: str  # JSON list of the GPU indices held
    custom: str  # JSON object: name -> amount
    created_at: float


# --- wire format ----------------------------------------------------------------------------------

def _number(value: Any, where: str, *, whole: bool) -> Any:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
            or value < 0:
        kind = "a whole number" if whole else "a number"
        raise InvalidSpec(f"{where}: {value!r} is not {kind} of at least 0")
    return value


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def resources_from_wire(data: Mapping[str, Any] | None, where: str = "") -> Resources:
    """Amounts from `{cores, memory_mb, gpus, custom}`; a missing amount is zero.

    `where` names the argument in refusals, such as "minimum" in "minimum.cores: ...".
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidSpec(f"{where or 'resources'}: expected an object with "
                          f"{', '.join(AMOUNT_KEYS)}")
    unknown = sorted(set(data) - set(AMOUNT_KEYS))
    if unknown:
        raise InvalidSpec(f"{_path(where, unknown[0])}: unknown resource (expected one of "
                          f"{', '.join(AMOUNT_KEYS)})")
    custom = data.get("custom") or {}
    if not isinstance(custom, Mapping) or not all(isinstance(name, str) for name in custom):
        raise InvalidSpec(f"{_path(where, 'custom')}: expected an object of name -> amount")
    return Resources(
        cores=_number(data.get("cores", 0), _path(where, "cores"), whole=False),
        memory_mb=_number(data.get("memory_mb", 0), _path(where, "memory_mb"), whole=True),
        gpus=_number(data.get("gpus", 0), _path(where, "gpus"), whole=True),
        custom={name: _number(amount, _path(where, f"custom.{name}"), whole=False)
                for name, amount in custom.items()},
    )


def resources_to_wire(resources: Resources) -> dict[str, Any]:
    return {"cores": resources.cores, "memory_mb": resources.memory_mb, "gpus": resources.gpus,
            "custom": dict(resources.custom)}


def host_totals_from_wire(host: str, cores: Any, memory_mb: Any,
                          gpus: Iterable[Mapping[str, Any]] | None,
                          custom: Mapping[str, Any] | None) -> HostTotals:
    """A host's report as the pool sends it; the GPU count is the length of the GPU list."""
    if not isinstance(host, str) or not host:
        raise InvalidSpec("host: a host name is required")
    listed: list[GpuInfo] = []
    for position, gpu in enumerate(gpus or ()):
        where = f"gpus[{position}]"
        if not isinstance(gpu, Mapping) or "index" not in gpu:
            raise InvalidSpec(f"{where}: expected an object with {', '.join(GPU_KEYS)}")
        unknown = sorted(set(gpu) - set(GPU_KEYS))
        if unknown:
            raise InvalidSpec(f"{where}.{unknown[0]}: unknown field")
        listed.append(GpuInfo(index=_number(gpu["index"], f"{where}.index", whole=True),
                              model=str(gpu.get("model", "declared")),
                              memory_mb=_number(gpu.get("memory_mb", 0), f"{where}.memory_mb",
                                                whole=True)))
    resources = resources_from_wire({"cores": cores, "memory_mb": memory_mb, "gpus": len(listed),
                                     "custom": custom or {}})
    try:
        return HostTotals(host, resources, tuple(listed))
    except ValueError as exc:  # the same GPU index listed twice
        raise InvalidSpec(f"gpus: {exc}") from None


# --- rows and the ledger's types ------------------------------------------------------------------

def _totals(record: HostRecord) -> HostTotals:
    gpus = tuple(GpuInfo(**gpu) for gpu in json.loads(record.gpus))
    return HostTotals(record.host, Resources(record.cores, record.memory_mb, len(gpus),
                                             json.loads(record.custom)), gpus)


def _reservation(record: ReservationRecord) -> Reservation:
    return Reservation(record.id, record.host,
                       Resources(record.cores, record.memory_mb, record.gpus,
                                 json.loads(record.custom)),
                       tuple(json.loads(record.gpu_indices)))


def _reservation_dict(record: ReservationRecord) -> dict[str, Any]:
    return {"id": record.id, "host": record.host, "worker_id": record.worker_id,
            "task_id": record.task_id, "attempt": record.attempt,
            "resources": resources_to_wire(_reservation(record).resources),
            "gpu_indices": json.loads(record.gpu_indices), "created_at": record.created_at}


def _held_on(session: Session, host: str | None = None) -> list[ReservationRecord]:
    query = select(ReservationRecord)
    if host is not None:
        query = query.where(col(ReservationRecord.host) == host)
    # Oldest first, as the ledger lists them.
    return list(session.scalars(query.order_by(col(ReservationRecord.created_at),
                                               col(ReservationRecord.id))).all())


# --- changes --------------------------------------------------------------------------------------

def report_host(store: Store, totals: HostTotals) -> dict[str, Any]:
    """Record what a host has; lowered below what is reserved, the host takes no new work until
    enough is released (running work is never taken away). The latest report holds: when it
    differs from the one before, the reply's `replaced` gives the totals it replaced (and when
    they were reported) so the reporter can say so; otherwise `replaced` is None."""
    gpus = json.dumps([{"index": g.index, "model": g.model, "memory_mb": g.memory_mb}
                       for g in totals.gpus])
    custom = json.dumps(dict(totals.resources.custom))
    replaced: dict[str, Any] | None = None
    with store.write() as session:
        now = store.now(session)
        record = session.get(HostRecord, totals.host)
        if record is None:
            session.add(HostRecord(host=totals.host, cores=totals.resources.cores,
                                   memory_mb=totals.resources.memory_mb, gpus=gpus,
                                   custom=custom, reported_at=now))
        else:
            before = (record.cores, record.memory_mb, json.loads(record.gpus),
                      json.loads(record.custom))
            if before != (totals.resources.cores, totals.resources.memory_mb,
                          json.loads(gpus), json.loads(custom)):
                replaced = {**resources_to_wire(_totals(record).resources),
                            "reported_at": record.reported_at}
            record.cores, record.memory_mb = totals.resources.cores, totals.resources.memory_mb
            record.gpus, record.custom, record.reported_at = gpus, custom, now
    return {**host_view(store, totals.host), "replaced": replaced}


def reserve(store: Store, reservation_id: str, host: str, worker_id: str, task_id: int,
            attempt: int, minimum: Resources,
            preferred: Resources | None = None) -> dict[str, Any] | None:
    """Hold at least minimum and up to preferred on host, all or nothing.

    None when it does not fit (or the host never reported), and then nothing is stored. An id
    already held gets its reservation back unchanged, so a retried request never takes twice.
    """
    with store.write() as session:
        # A write first: on PostgreSQL it locks the host's row, on SQLite it takes the database's
        # write lock, so no other transaction can book this host between our check and our insert.
        session.execute(update(HostRecord).where(col(HostRecord.host) == host)
                        .values(cores=HostRecord.cores))
        existing = session.get(ReservationRecord, reservation_id)
        if existing is not None:
            return _reservation_dict(existing)
        record = session.get(HostRecord, host)
        if record is None:
            return None
        ledger = HostLedger.rebuild([_totals(record)],
                                    [_reservation(held) for held in _held_on(session, host)])
        granted = ledger.reserve(reservation_id, host, minimum, preferred)
        if granted is None:
            return None
        new = ReservationRecord(
            id=reservation_id, host=host, worker_id=worker_id, task_id=task_id, attempt=attempt,
            cores=granted.resources.cores, memory_mb=granted.resources.memory_mb,
            gpus=granted.resources.gpus, gpu_indices=json.dumps(list(granted.gpu_indices)),
            custom=json.dumps(dict(granted.resources.custom)), created_at=store.now(session))
        session.add(new)
        return _reservation_dict(new)


def _release_where(store: Store, *conditions: Any) -> list[dict[str, Any]]:
    with store.write() as session:
        records = session.scalars(select(ReservationRecord).where(*conditions)).all()
        released = [_reservation_dict(record) for record in records]
        if records:
            session.execute(delete(ReservationRecord).where(
                col(ReservationRecord.id).in_([r.id for r in records])))
        return released


def release(store: Store, reservation_id: str) -> dict[str, Any] | None:
    """Give back what reservation_id holds; None when it was released already or never held."""
    released = _release_where(store, ReservationRecord.id == reservation_id)
    return released[0] if released else None


def release_for_worker(store: Store, worker_id: str) -> list[dict[str, Any]]:
    """Give back everything a worker holds (it left, or the registry gave up on it)."""
    return _release_where(store, ReservationRecord.worker_id == worker_id)


def release_for_task(store: Store, task_id: int, attempt: int | None = None) -> list[dict[str, Any]]:
    """Give back what one attempt of a task holds, or every attempt's when attempt is None."""
    conditions = [ReservationRecord.task_id == task_id]
    if attempt is not None:
        # Only that attempt: a later attempt of the same task may already hold resources.
        conditions.append(ReservationRecord.attempt == attempt)
    return _release_where(store, *conditions)


def release_for_cancelled_task(store: Store, task_id: int,
                               task: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Give back what a cancelled task's ended attempts hold (see attempts_ended_before)."""
    conditions = [ReservationRecord.task_id == task_id]
    ended_before = attempts_ended_before(task)
    if ended_before is not None:
        conditions.append(col(ReservationRecord.attempt) < ended_before)
    return _release_where(store, *conditions)


# --- reads ----------------------------------------------------------------------------------------

def ledger(store: Store) -> HostLedger:
    """Every host's totals and every reservation, as committed: the negotiator's whole state."""
    with store.read() as session:
        hosts = session.scalars(select(HostRecord)).all()
        held = _held_on(session)
    return HostLedger.rebuild([_totals(record) for record in hosts],
                              [_reservation(record) for record in held])


def free(store: Store, host: str) -> dict[str, Any]:
    """What host can still give; a host that never reported has nothing."""
    with store.read() as session:
        record = session.get(HostRecord, host)
        if record is None:
            return resources_to_wire(NO_RESOURCES)
        held = _held_on(session, host)
    whole = HostLedger.rebuild([_totals(record)], [_reservation(r) for r in held])
    return resources_to_wire(whole.free(host))


def _host_dict(record: HostRecord, held: list[ReservationRecord]) -> dict[str, Any]:
    totals = _totals(record)
    whole = HostLedger.rebuild([totals], [_reservation(r) for r in held])
    reserved = sum((_reservation(r).resources for r in held), NO_RESOURCES)
    return {"host": record.host, "reported_at": record.reported_at,
            "totals": resources_to_wire(totals.resources),
            "gpus": json.loads(record.gpus),
            "reserved": resources_to_wire(reserved),
            "free": resources_to_wire(whole.free(record.host)),
            "reservations": [_reservation_dict(r) for r in held]}


def host_view(store: Store, host: str) -> dict[str, Any]:
    """One host: totals, reserved, free and its reservations (zeros for a host never reported)."""
    with store.read() as session:
        record = session.get(HostRecord, host)
        if record is None:
            return {"host": host, "reported_at": None, "totals": resources_to_wire(NO_RESOURCES),
                    "gpus": [], "reserved": resources_to_wire(NO_RESOURCES),
                    "free": resources_to_wire(NO_RESOURCES), "reservations": []}
        return _host_dict(record, _held_on(session, host))


def hosts(store: Store) -> list[dict[str, Any]]:
    """Every host that reported, by name: totals, reserved, free and its reservations."""
    with store.read() as session:
        records = session.scalars(select(HostRecord).order_by(HostRecord.host)).all()
        held: dict[str, list[ReservationRecord]] = {}
        for record in _held_on(session):
            held.setdefault(record.host, []).append(record)
        return [_host_dict(record, held.get(record.host, [])) for record in records]


# --- the audit log (shared.audit) ---------------------------------------------------------------

AUDIT = audit.audit_table(NegotiatorTable.metadata, "negotiator")
"""What was done to hosts, by whom, when and from where."""
# --- forgetting: hosts gone long ago, when the cleanup service asks --------------------------------

def forget_hosts(store: Store, silent_for_seconds: float,
                 live_hosts: Iterable[str] = ()) -> list[str]:
    """Delete hosts that last reported more than `silent_for_seconds` ago, hold no reservation
    and are not among `live_hosts` (hosts the registry still has a live worker on)."""
    keep = set(live_hosts)
    with store.write() as session:
        now = store.now(session)
        cutoff = now - max(0.0, float(silent_for_seconds))
        held = set(session.scalars(select(ReservationRecord.host)))
        old = session.scalars(select(HostRecord).where(
            col(HostRecord.reported_at) < cutoff)).all()
        forgotten = [record.host for record in old
                     if record.host not in keep and record.host not in held]
        for record in old:
            if record.host in forgotten:
                session.delete(record)
    return forgotten
