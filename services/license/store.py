"""The license service's own tables (licence pools, leases) and their changes, without nameko.

A pool is a named count of licence tokens: its total (set by hand, from config, or from the licence
server), what Corral's leases hold of it, and what the licence server says is in use outside
Corral (`external_in_use`, so an artist's interactive session is not handed to a render too).
What is free is `max(0, total - in_use - external_in_use)`.

A lease holds some of several pools for one task attempt on one worker, all or nothing. `acquire`
locks the pools it wants (their rows, in name order, on PostgreSQL; the database's write lock on
SQLite), reads every lease, decides and inserts the new lease in one write transaction: so no other
acquire, whichever process or green thread makes it, can take the last token between the check and
the booking. Nothing is kept in memory between calls, so a restarted service reads back exactly
what was granted.

Every change is safe to run twice: a lease id already held gets the same lease back, and releasing
what is no longer held does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, registry
from sqlmodel import Field, SQLModel, col

from services.common.holdings import attempts_ended_before
from shared import audit
from shared.db import Store
from shared.errors import InvalidSpec, InvalidState, NotFound
from shared.licences import check_licence_name

_T = TypeVar("_T")

SOURCES: Final = ("manual", "flexlm", "rlm")


class LicenceTable(SQLModel, registry=registry()):
    """Base of the license service's tables: their own metadata, in its own database."""


class LicencePoolRecord(LicenceTable, table=True):
    """One licence's tokens: how many there are and how many are used outside Corral."""

    __tablename__ = "licence_pool"

    name: str = Field(primary_key=True)
    total: int
    external_in_use: int = 0
    source: str = "manual"  # one of SOURCES: who set the total last
    synced_at: float | None = None  # when the licence server was last read
    updated_at: float


class LicenceLeaseRecord(LicenceTable, table=True):
    """What one task attempt, run by one worker, holds of the pools."""

    __tablename__ = "licence_lease"

    id: str = Field(primary_key=True)
    task_id: int = Field(index=True)
    attempt: int
    worker_id: str = Field(index=True)
    holdings: str  # JSON object: licence name -> count
    created_at: float


# --- arguments ------------------------------------------------------------------------------------

def _whole(value: Any, where: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidSpec(f"{where}: must be a whole number >= {least}, got {value!r}")
    return value


def _source(source: str) -> str:
    if source not in SOURCES:
        raise InvalidSpec(f"source: {source!r} is not one of {', '.join(SOURCES)}")
    return source


# --- rows and views -------------------------------------------------------------------------------

def _holdings(record: LicenceLeaseRecord) -> dict[str, int]:
    held: dict[str, int] = json.loads(record.holdings)
    return held


def _lease_dict(record: LicenceLeaseRecord) -> dict[str, Any]:
    return {"id": record.id, "task_id": record.task_id, "attempt": record.attempt,
            "worker_id": record.worker_id, "licences": _holdings(record),
            "created_at": record.created_at}


def _leases(session: Session) -> list[LicenceLeaseRecord]:
    # Oldest first: the order a pool's holders are listed in.
    return list(session.scalars(select(LicenceLeaseRecord).order_by(
        col(LicenceLeaseRecord.created_at), col(LicenceLeaseRecord.id))).all())


def _in_use(leases: Iterable[LicenceLeaseRecord]) -> dict[str, int]:
    used: dict[str, int] = {}
    for lease in leases:
        for name, count in _holdings(lease).items():
            used[name] = used.get(name, 0) + count
    return used


def _free(pool: LicencePoolRecord, in_use: int) -> int:
    return max(0, pool.total - in_use - pool.external_in_use)


def _pool_dict(pool: LicencePoolRecord, leases: Iterable[LicenceLeaseRecord]) -> dict[str, Any]:
    holders: list[dict[str, Any]] = [
        {"lease_id": lease.id, "task_id": lease.task_id, "attempt": lease.attempt,
         "worker_id": lease.worker_id, "count": _holdings(lease)[pool.name]}
        for lease in leases if pool.name in _holdings(lease)]
    in_use = sum(holder["count"] for holder in holders)
    return {"name": pool.name, "total": pool.total, "in_use": in_use,
            "external_in_use": pool.external_in_use, "free": _free(pool, in_use),
            "source": pool.source, "synced_at": pool.synced_at, "holders": holders}


def _lock_pools(session: Session, names: Iterable[str]) -> dict[str, LicencePoolRecord]:
    """The named pools, locked until the transaction ends; a name without a pool is left out.

    On PostgreSQL their rows are locked in name order (two acquires of the same pools then never
    wait on each other crosswise). SQLite has no row locks: a write statement takes the
    database's write lock, which also keeps out every other writer until the commit.
    """
    wanted = sorted(set(names))
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(LicencePoolRecord).where(col(LicencePoolRecord.name).in_(wanted))
                        .values(total=LicencePoolRecord.total))
    found = session.scalars(select(LicencePoolRecord)
                            .where(col(LicencePoolRecord.name).in_(wanted))
                            .order_by(col(LicencePoolRecord.name)).with_for_update()).all()
    return {pool.name: pool for pool in found}


def _once_more_on_conflict(change: Callable[[], _T]) -> _T:
    """change(), run again if its insert of a new pool met the same pool inserted meanwhile.

    Row locks cannot keep out a row that does not exist yet: two processes may both find a pool
    missing and insert it. The loser's second run finds it and changes it instead.
    """
    try:
        return change()
    except IntegrityError:
        return change()


# --- pools ----------------------------------------------------------------------------------------

def set_pool(store: Store, name: str, total: int, source: str = "manual") -> dict[str, Any]:
    """Create the pool `name` or change its total; the pool's view.

    A total lowered below what leases hold takes nothing back: nothing more is granted until
    enough leases return. A count set by hand also forgets what a licence server last said was
    in use outside Corral; the next sync (if the pool has one) reads it again.
    """
    check_licence_name(name, "name")
    _whole(total, "total", 0)
    _source(source)

    def change() -> dict[str, Any]:
        with store.write() as session:
            now = store.now(session)
            pool = _lock_pools(session, [name]).get(name)
            if pool is None:
                pool = LicencePoolRecord(name=name, total=total, source=source, updated_at=now)
                session.add(pool)
            else:
                pool.total, pool.source, pool.updated_at = total, source, now
            if source == "manual":
                pool.external_in_use = 0
            session.flush()
            return _pool_dict(pool, _leases(session))

    return _once_more_on_conflict(change)


def ensure_pool(store: Store, name: str, total: int, source: str = "manual") -> bool:
    """Create the pool `name` with total unless it exists (then it is left as it is); created?"""
    check_licence_name(name, "name")
    _whole(total, "total", 0)
    _source(source)

    def change() -> bool:
        with store.write() as session:
            if _lock_pools(session, [name]):
                return False
            session.add(LicencePoolRecord(name=name, total=total, source=source,
                                          updated_at=store.now(session)))
            return True

    return _once_more_on_conflict(change)


def remove_pool(store: Store, name: str) -> dict[str, Any] | None:
    """Delete the pool `name`; its last view, or None when there was no such pool.

    Refused with InvalidState while leases hold some of it: release them (or let their tasks
    end) first.
    """
    with store.write() as session:
        pool = _lock_pools(session, [name]).get(name)
        if pool is None:
            return None
        view = _pool_dict(pool, _leases(session))
        if view["holders"]:
            raise InvalidState(f"licence {name!r} is held by {len(view['holders'])} lease(s); "
                               "it can be removed once they are released")
        session.delete(pool)
        return view


def record_sync(store: Store, name: str, issued: int, in_use: int, source: str) -> dict[str, Any]:
    """What the licence server says of `name`: total becomes issued, and external_in_use what is
    in use beyond Corral's own leases. The pool is created if it does not exist; its view.

    A tool running under a Corral lease has checked its licence out of the server too, so what
    Corral's leases hold is taken off the server's in-use count before it is stored: it is not
    counted twice.
    """
    check_licence_name(name, "name")
    _whole(issued, "issued", 0)
    _whole(in_use, "in_use", 0)
    _source(source)

    def change() -> dict[str, Any]:
        with store.write() as session:
            now = store.now(session)
            pool = _lock_pools(session, [name]).get(name)
            if pool is None:
                pool = LicencePoolRecord(name=name, total=issued, updated_at=now)
                session.add(pool)
            leases = _leases(session)
            held = _in_use(leases).get(name, 0)
            pool.total, pool.external_in_use = issued, max(0, in_use - held)
            pool.source, pool.synced_at, pool.updated_at = source, now, now
            session.flush()
            return _pool_dict(pool, leases)

    return _once_more_on_conflict(change)


# --- leases ---------------------------------------------------------------------------------------

def acquire(store: Store, lease_id: str, task_id: int, attempt: int, worker_id: str,
            wanted: Mapping[str, int]) -> dict[str, Any] | None:
    """Hold `wanted` (licence name -> count) for one task attempt, all or nothing; the lease.

    None when any wanted licence has fewer free than asked, and then nothing is held. NotFound
    when a wanted licence has no pool. A lease id already held gets its lease back unchanged, so
    a retried request never takes twice.
    """
    for name, count in wanted.items():
        check_licence_name(name, "licences")
        _whole(count, f"licences.{name}", 1)
    try:
        with store.write() as session:
            pools = _lock_pools(session, wanted)
            existing = session.get(LicenceLeaseRecord, lease_id)
            if existing is not None:
                return _lease_dict(existing)
            missing = sorted(set(wanted) - set(pools))
            if missing:
                raise NotFound(f"licences.{missing[0]}: there is no licence pool named "
                               f"{missing[0]!r}")
            in_use = _in_use(_leases(session))
            if any(_free(pools[name], in_use.get(name, 0)) < count
                   for name, count in wanted.items()):
                return None
            lease = LicenceLeaseRecord(id=lease_id, task_id=task_id, attempt=attempt,
                                       worker_id=worker_id,
                                       holdings=json.dumps(dict(sorted(wanted.items()))),
                                       created_at=store.now(session))
            session.add(lease)
            return _lease_dict(lease)
    except IntegrityError:
        # The same lease id inserted at once by a retry that took no pool locks (nothing wanted).
        with store.read() as session:
            existing = session.get(LicenceLeaseRecord, lease_id)
            if existing is None:
                raise
            return _lease_dict(existing)


def _release_where(store: Store, *conditions: Any) -> list[dict[str, Any]]:
    with store.write() as session:
        records = session.scalars(select(LicenceLeaseRecord).where(*conditions)
                                  .order_by(col(LicenceLeaseRecord.created_at),
                                            col(LicenceLeaseRecord.id))).all()
        released = [_lease_dict(record) for record in records]
        if records:
            session.execute(delete(LicenceLeaseRecord).where(
                col(LicenceLeaseRecord.id).in_([record.id for record in records])))
        return released


def release(store: Store, lease_id: str) -> dict[str, Any] | None:
    """Give back what lease_id holds; the lease, or None when it was released already or never held."""
    released = _release_where(store, col(LicenceLeaseRecord.id) == lease_id)
    return released[0] if released else None


def release_for_worker(store: Store, worker_id: str) -> list[dict[str, Any]]:
    """Give back every lease a worker holds (it left, or the registry gave up on it)."""
    return _release_where(store, col(LicenceLeaseRecord.worker_id) == worker_id)


def release_for_task(store: Store, task_id: int, attempt: int | None = None) -> list[dict[str, Any]]:
    """Give back what one attempt of a task holds, or every attempt's when attempt is None."""
    conditions = [col(LicenceLeaseRecord.task_id) == task_id]
    if attempt is not None:
        # Only that attempt: a later attempt of the same task may already hold licences.
        conditions.append(col(LicenceLeaseRecord.attempt) == attempt)
    return _release_where(store, *conditions)


def release_for_cancelled_task(store: Store, task_id: int,
                               task: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Give back what a cancelled task's ended attempts hold (see attempts_ended_before)."""
    conditions = [col(LicenceLeaseRecord.task_id) == task_id]
    ended_before = attempts_ended_before(task)
    if ended_before is not None:
        conditions.append(col(LicenceLeaseRecord.attempt) < ended_before)
    return _release_where(store, *conditions)


# --- reads ----------------------------------------------------------------------------------------

def pools(store: Store) -> list[dict[str, Any]]:
    """Every pool by name: total, in use by Corral, in use outside it, free, source and holders."""
    with store.read() as session:
        records = session.scalars(select(LicencePoolRecord)
                                  .order_by(col(LicencePoolRecord.name))).all()
        leases = _leases(session)
        return [_pool_dict(record, leases) for record in records]


def pool_view(store: Store, name: str) -> dict[str, Any]:
    """One pool as `pools` lists it; NotFound when there is no pool of that name."""
    with store.read() as session:
        record = session.get(LicencePoolRecord, name)
        if record is None:
            raise NotFound(f"there is no licence pool named {name!r}")
        return _pool_dict(record, _leases(session))


def leases(store: Store) -> list[dict[str, Any]]:
    """Every lease held, oldest first."""
    with store.read() as session:
        return [_lease_dict(record) for record in _leases(session)]


# --- the audit log (shared.audit) ---------------------------------------------------------------

AUDIT = audit.audit_table(LicenceTable.metadata, "licence")
"""What was done to licence pools, by whom, when and from where."""
