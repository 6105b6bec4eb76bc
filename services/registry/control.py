"""Drain, disable, enable and stop workers: the wanted states the registry keeps, without nameko."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

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
from shared.worker_control import KEPT, Control, Wanted, wanted_of


def _selected(session: Any, worker_id: str | None, host: str | None,
              pool: str | None) -> list[Worker]:
    """The workers one selector names: one worker by id, or the live workers of a host or pool."""
    given = [name for name, value in (("worker_id", worker_id), ("host", host), ("pool", pool))
             if value]
    if len(given) != 1:
        raise InvalidArgument("name exactly one of worker_id, host or pool"
                              + (f" (got {', '.join(given)})" if given else ""))
    if worker_id:
        worker = session.get(Worker, worker_id)
        if worker is None:
            raise NotFound(f"no worker {worker_id}")
        return [worker]
    query = select(Worker).where(Worker.state.in_(ALIVE_STATES))  # type: ignore[attr-defined]
    query = query.where(Worker.host == host) if host else query.where(Worker.pool == pool)
    workers = list(session.scalars(query.order_by(Worker.worker_id)).all())
    if not workers:
        raise NotFound(f"no live worker on host {host}" if host else f"no live worker in pool {pool}")
    return workers


def set_wanted_state(store: Store, state: str, actor: str, worker_id: str | None = None,
                     host: str | None = None, pool: str | None = None,
                     now: bool = False) -> tuple[dict[str, Any], Emitted]:
    """Ask the named workers to drain, be disabled, be enabled or stop.

    Drain and disable are kept against each worker's host and name (so a restart keeps them);
    enable removes that and any stop not yet obeyed; a stop is kept on the running worker only.
    """
    try:
        control = Control(state)
    except ValueError:
        raise InvalidArgument(f"state: {state!r} is not one of "
                              f"{', '.join(c.value for c in Control)}") from None
    wanted = wanted_of(control, now)
    with store.write() as session:
        at = store.now(session)
        workers = _selected(session, worker_id, host, pool)
        for worker in workers:
            key = identity_of(worker)
            kept = session.get(WorkerControl, key)
            if wanted in KEPT:
                if kept is None:
                    session.add(WorkerControl(host=key[0], name=key[1], wanted=wanted,
                                              set_by=actor, set_at=at))
                else:
                    kept.wanted, kept.set_by, kept.set_at = wanted, actor, at
            elif wanted is Wanted.ACTIVE:
                worker.stop = None
                if kept is not None:
                    session.delete(kept)
            else:
                worker.stop = wanted
        session.flush()
        changed = {worker.worker_id: str(wanted_state(session, worker)) for worker in workers}
    reply = {"state": control.value, "now": bool(now), "workers": changed}
    return reply, [(events.WORKER_CONTROLLED, {"workers": changed})]
