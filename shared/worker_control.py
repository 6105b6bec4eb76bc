"""What a wrangler wants of a worker (drain, disable, stop) and what that means for taking work.

The registry keeps the wanted state, answers a registration with it and sends a change of it by
its `worker_controlled` event (again while a worker's heartbeat says otherwise); the worker obeys, and
the scheduler counts only workers that take work when it releases tasks and explains a wait.

A worker's identity across restarts is its host and its name: `corral worker run --name`, or by
default `<pool>-<n>` with the lowest n no other running worker of that pool on that host holds
(services.worker.control), so a host's second worker of a pool is always `cpu-2`, whichever
order they were started or restarted in. Drain and disable are kept against that identity, so a
worker started again under it comes back drained or disabled until someone enables it. A stop is
for the running process only (its worker id): a worker started again after a stop takes work.
A drain or disable of a host is kept for the host itself, so it holds every worker that host
starts later too (a pool's new workers included); a pool's are kept for each of its workers.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Wanted(StrEnum):
    """The state a worker is asked to be in."""

    ACTIVE = "active"        # take work
    DRAIN = "drain"          # finish the running task, take no more
    DISABLE = "disable"      # stay registered, take nothing
    STOP = "stop"            # finish the running task, then exit
    STOP_NOW = "stop-now"    # hand the running task back uncharged, then exit


class Control(StrEnum):
    """What a person may ask for (`corral worker drain|disable|enable|stop`)."""

    DRAIN = "drain"
    DISABLE = "disable"
    ENABLE = "enable"
    STOP = "stop"


EVERY_WORKER = "*"
"""The name a drain or disable of a whole host is kept under (no worker may be named this)."""

KEPT = frozenset({Wanted.DRAIN, Wanted.DISABLE})
"""Wanted states kept against the worker's identity, so they outlive a restart."""


def takes_work(wanted: str | None) -> bool:
    """Whether a worker in this wanted state may be given a task (None: nothing asked)."""
    return wanted in (None, Wanted.ACTIVE)


def wanted_of(control: Control, now: bool = False) -> Wanted:
    """The wanted state a control asks for; `now` only means something for a stop."""
    if control is Control.STOP:
        return Wanted.STOP_NOW if now else Wanted.STOP
    return {Control.DRAIN: Wanted.DRAIN, Control.DISABLE: Wanted.DISABLE,
            Control.ENABLE: Wanted.ACTIVE}[control]


class WorkerControlled(BaseModel):
    """The payload of the registry's `worker_controlled` event: each named worker's new state."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    workers: dict[str, Wanted]
