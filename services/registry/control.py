"""Drain, disable, enable and stop workers: the wanted states the registry keeps, without nameko."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlmodel import col

from services.registry.store import (
    ALIVE_STATES,
    Emitted,
    Worker,
    WorkerControl,
    identity_of,
    wanted_state,
)
from shared import events
from shared.db import Store
from shared.errors import InvalidArgument, NotFound
from shared.worker_control import EVERY_WORKER, KEPT, Control, Wanted, wanted_of


def _target(worker_id: str | None, host: str | None, pool: str | None) -> str:
    """What one selector names, as the audit log and the reply say it; exactly one is given."""
    given = [f"{kind} {value}" for kind, value in (("worker", worker_id), ("host", host),
                                                   ("pool", pool)) if value]
    if len(given) != 1:
        raise InvalidArgument("name exactly one of worker_id, host or pool"
                              + (f" (got {', '.join(given)})" if given else ""))
    return given[0]


def _selected(session: Any, worker_id: str | None, host: str | None,
              pool: str | None) -> list[Worker]:
    """One worker by id, or the live workers of a host or pool."""
    if worker_id:
        worker = session.get(Worker, worker_id)
        if worker is None:
            raise NotFound(f"no worker {worker_id}")
        return [worker]
    query = select(Worker).where(col(Worker.state).in_(ALIVE_STATES))
    query = query.where(col(Worker.host) == host) if host else query.where(col(Worker.pool) == pool)
    return list(session.scalars(query.order_by(Worker.worker_id)).all())


def _keep(session: Any, key: tuple[str, str], wanted: Wanted, actor: str, at: float) -> None:
    kept = session.get(WorkerControl, key)
    if kept is None:
        session.add(WorkerControl(host=key[0], name=key[1], wanted=wanted, set_by=actor,
                                  set_at=at))
    else:
        kept.wanted, kept.set_by, kept.set_at = wanted, actor, at


def set_wanted_state(store: Store, state: str, actor: str, worker_id: str | None = None,
                     host: str | None = None, pool: str | None = None,
                     now: bool = False) -> tuple[dict[str, Any], Emitted]:
    """Ask one worker, or the live workers of a host or pool, to drain, be disabled, be enabled
    or stop.

    Drain and disable are kept against each worker's host and name (so a restart keeps them),
    or for a host against the host (so its later workers obey too); enable removes them and any
    stop not yet obeyed; a stop is kept on the running workers only.
    """
    try:
        control = Control(state)
    except ValueError:
        raise InvalidArgument(f"state: {state!r} is not one of "
                              f"{', '.join(c.value for c in Control)}") from None
    target = _target(worker_id, host, pool)
    wanted = wanted_of(control, now)
    with store.write() as session:
        at = store.now(session)
        workers = _selected(session, worker_id, host, pool)
        if not workers and not (host and wanted in {*KEPT, Wanted.ACTIVE}):
            raise NotFound(f"no live worker in pool {pool}" if pool
                           else f"no live worker on host {host}")
        if host and wanted in KEPT:
            _keep(session, (host, EVERY_WORKER), wanted, actor, at)
        elif host:
            session.execute(delete(WorkerControl).where(col(WorkerControl.host) == host))
        for worker in workers:
            key = identity_of(worker)
            if wanted in KEPT:
                if not host:
                    _keep(session, key, wanted, actor, at)
            elif wanted is Wanted.ACTIVE:
                worker.stop = None
                kept = session.get(WorkerControl, key)
                if kept is not None:
                    session.delete(kept)
            else:
                worker.stop = wanted
        session.flush()
        changed = {worker.worker_id: str(wanted_state(session, worker)) for worker in workers}
    reply = {"state": control.value, "now": bool(now), "target": target, "workers": changed}
    return reply, [(events.WORKER_CONTROLLED, {"workers": changed})]
