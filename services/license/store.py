"""The license service's own tables (licence pools, leases) and their changes, without nameko.

A pool is a named count of licence tokens: its total (set by hand, from config, or from the licence
server), what Corral's leases hold of it, and what the licence server says is in use outside
Corral (`external_in_use`, so an artist's interactive session is not handed to a render too).
What is free is `max(0, total - in_use - external_in_use)`. A pool may count per host (Tractor's
BladeMax, a node-locked seat): then a host holds one seat however many of its tasks use it, and
`in_use` is the number of hosts holding it (or more, for a lease asking several seats).

A lease holds some of several pools for one task attempt on one worker, all or nothing. `acquire`
locks the pools it wants (their rows, in name order, on PostgreSQL; the database's write lock on
SQLite), reads every lease, decides and inserts the new lease in one write transaction: so no other
acquire, whichever process or green thread makes it, can take the last token between the check and
the booking. Nothing is kept in memory between calls, so a restarted service reads back exactly
what was granted.

A lease is held either by one task attempt or, with `lifetime`, by a worker from its start to its
exit (Pixyz's LICENSE_ACQUIRE_AT_START, `corral worker run --hold-licence`); the latter has task 0 and
goes when its worker leaves or is lost.

Every change is safe to run twice: a lease id already held gets the same lease back, and releasing
what is no longer held does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from sqlalchemy import delete, false, select, update
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
    per_host: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
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
    host: str | None = None  # where it is used: what a per-host pool counts by
    lifetime: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


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
            "created_at": record.created_at, "host": record.host, "lifetime": record.lifetime}


def _leases(session: Session) -> list[LicenceLeaseRecord]:
    # Oldest first: the order a pool's holders are listed in.
    return list(session.scalars(select(LicenceLeaseRecord).order_by(
        col(LicenceLeaseRecord.created_at), col(LicenceLeaseRecord.id))).all())


def _seat_of(lease: LicenceLeaseRecord) -> str:
    # A lease that names no host is a machine of its own: it shares its seat with nobody.
    return f"host {lease.host}" if lease.host is not None else f"lease {lease.id}"


def _seats_by_host(name: str, leases: Iterable[LicenceLeaseRecord]) -> dict[str, int]:
    """For a per-host pool: what each host holds of it, the most any one of its leases asks."""
    seats: dict[str, int] = {}
    for lease in leases:
        count = _holdings(lease).get(name)
        if count is not None:
            seat = _seat_of(lease)
            seats[seat] = max(seats.get(seat, 0), count)
    return seats


def _in_use(leases: Iterable[LicenceLeaseRecord],
            per_host: Iterable[str] = ()) -> dict[str, int]:
    """What the leases hold of each pool; a pool named in `per_host` counts its hosts' seats."""
    leases = list(leases)
    used: dict[str, int] = {}
    for lease in leases:
        for name, count in _holdings(lease).items():
            used[name] = used.get(name, 0) + count
    for name in set(per_host) & set(used):
        used[name] = sum(_seats_by_host(name, leases).values())
    return used


def _per_host_names(pools: Iterable[LicencePoolRecord]) -> list[str]:
    return [pool.name for pool in pools if pool.per_host]


def _free(pool: LicencePoolRecord, in_use: int) -> int:
    return max(0, pool.total - in_use - pool.external_in_use)


def _needed(pool: LicencePoolRecord, count: int, host: str | None,
            leases: Iterable[LicenceLeaseRecord]) -> int:
    """How many more of the pool a new lease of `count` on `host` takes."""
    if not pool.per_host or host is None:
        return count
    # The host's seat covers every task on it: only a larger ask than it holds takes more.
    return max(0, count - _seats_by_host(pool.name, leases).get(f"host {host}", 0))


def _pool_dict(pool: LicencePoolRecord, leases: Iterable[LicenceLeaseRecord]) -> dict[str, Any]:
    holding = [lease for lease in leases if pool.name in _holdings(lease)]
    holders: list[dict[str, Any]] = [
        {"lease_id": lease.id, "task_id": lease.task_id, "attempt": lease.attempt,
         "worker_id": lease.worker_id, "count": _holdings(lease)[pool.name],
         "host": lease.host, "lifetime": lease.lifetime}
        for lease in holding]
    in_use = _in_use(holding, [pool.name] if pool.per_host else []).get(pool.name, 0)
    hosts = sorted({lease.host for lease in holding if lease.host is not None})
    free = _free(pool, in_use)
    # What a release pass may count on: the free seats, one more task on each worker holding a
    # seat for its life, and one more on each host of a per-host pool already holding one (the
    # worker's lease, not this figure, is what decides).
    usable = (free + sum(1 for lease in holding if lease.lifetime)
              + (len(hosts) if pool.per_host else 0))
    return {"name": pool.name, "total": pool.total, "in_use": in_use,
            "external_in_use": pool.external_in_use, "free": free, "usable": usable,
            "per_host": pool.per_host, "hosts": hosts if pool.per_host else [],
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

def set_pool(store: Store, name: str, total: int, source: str = "manual",
             per_host: bool | None = None) -> dict[str, Any]:
    """Create the pool `name` or change its total (and, unless per_host is None, how it counts);
    the pool's view.

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
                pool = LicencePoolRecord(name=name, total=total, source=source, updated_at=now,
                                         per_host=bool(per_host))
                session.add(pool)
            else:
                pool.total, pool.source, pool.updated_at = total, source, now
                if per_host is not None:
                    pool.per_host = per_host
            if source == "manual":
                pool.external_in_use = 0
            session.flush()
            return _pool_dict(pool, _leases(session))

    return _once_more_on_conflict(change)


def ensure_pool(store: Store, name: str, total: int, source: str = "manual",
                per_host: bool = False) -> bool:
    """Create the pool `name` with total unless it exists; created?

    An existing pool keeps its total (set by hand or by a sync since) but takes `per_host` from
    the config: how a licence is counted is the licence's nature, not a count that drifts.
    """
    check_licence_name(name, "name")
    _whole(total, "total", 0)
    _source(source)

    def change() -> bool:
        with store.write() as session:
            existing = _lock_pools(session, [name]).get(name)
            if existing is not None:
                existing.per_host = per_host
                return False
            session.add(LicencePoolRecord(name=name, total=total, source=source,
                                          per_host=per_host, updated_at=store.now(session)))
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
            held = _in_use(leases, [name] if pool.per_host else []).get(name, 0)
            pool.total, pool.external_in_use = issued, max(0, in_use - held)
            pool.source, pool.synced_at, pool.updated_at = source, now, now
            session.flush()
            return _pool_dict(pool, leases)

    return _once_more_on_conflict(change)


# --- leases ---------------------------------------------------------------------------------------

def acquire(store: Store, lease_id: str, task_id: int, attempt: int, worker_id: str,
            wanted: Mapping[str, int], host: str | None = None,
            lifetime: bool = False) -> dict[str, Any] | None:
    """Hold `wanted` (licence name -> count) for one task attempt on `host`, all or nothing; the
    lease. With `lifetime` the worker holds it for its whole life (task_id and attempt 0).

    None when any wanted licence has fewer free than asked, and then nothing is held; of a
    per-host pool, a host already holding a seat needs no other. NotFound when a wanted licence
    has no pool. A lease id already held gets its lease back unchanged, so a retried request
    never takes twice.
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
            leases = _leases(session)
            in_use = _in_use(leases, _per_host_names(pools.values()))
            if any(_free(pools[name], in_use.get(name, 0))
                   < _needed(pools[name], count, host, leases)
                   for name, count in wanted.items()):
                return None
            lease = LicenceLeaseRecord(id=lease_id, task_id=task_id, attempt=attempt,
                                       worker_id=worker_id,
                                       holdings=json.dumps(dict(sorted(wanted.items()))),
                                       created_at=store.now(session), host=host,
                                       lifetime=lifetime)
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
    # Never what a worker holds for its life: only its leaving or loss gives that back.
    conditions = [col(LicenceLeaseRecord.task_id) == task_id,
                  col(LicenceLeaseRecord.lifetime).is_(False)]
    if attempt is not None:
        # Only that attempt: a later attempt of the same task may already hold licences.
        conditions.append(col(LicenceLeaseRecord.attempt) == attempt)
    return _release_where(store, *conditions)


def release_for_cancelled_task(store: Store, task_id: int,
                               task: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Give back what a cancelled task's ended attempts hold (see attempts_ended_before)."""
    conditions = [col(LicenceLeaseRecord.task_id) == task_id,
                  col(LicenceLeaseRecord.lifetime).is_(False)]
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
