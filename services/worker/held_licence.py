"""Licences a worker holds from its start to its exit (Pixyz's LICENSE_ACQUIRE_AT_START).

`corral worker run --hold-licence pixyz` makes the worker ask the license service for a seat before it
takes any work, and take tasks only while it holds it: a tool whose licence check-out is slow, or
that keeps its licence between runs, pays that once. A task needing a licence the worker holds
books no second token of it (the seat covers it), only what it asks beyond. The seat goes back
when the worker leaves, and when it is lost the license service gives it back (the registry's
worker_lost); a worker that finds its seat gone (after a long cut-off, say) stops taking work
until it holds one again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.worker.rpc import RpcUnavailable, ServiceUnknown
from shared.licences import parse_licence_needs

log = logging.getLogger("corral.worker")

Call = Callable[..., Awaitable[Any]]
"""The worker's `_call(service, method, attempts, optional_service=..., **arguments)`."""


def parse_hold_option(values: list[str]) -> dict[str, int]:
    """`--hold-licence pixyz --hold-licence nuke=2` as licence name -> count; InvalidSpec if bad."""
    wanted: dict[str, int] = {}
    for value in values:
        name, _, count = value.partition("=")
        try:
            number = int(count) if count else 1
        except ValueError:
            number = -1
        needs = parse_licence_needs({name: number}, "--hold-licence")
        for licence, amount in needs.items():
            wanted[licence] = wanted.get(licence, 0) + amount
    return dict(sorted(wanted.items()))


class HeldLicences:
    """What one worker holds for its life, and whether it holds it now."""

    def __init__(self, wanted: Mapping[str, int], worker_id: str, host: str) -> None:
        self.wanted = dict(wanted)
        self.worker_id = worker_id
        self.host = host
        self.lease_id = f"held by {worker_id}"
        self.lease: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        """Whether the worker may take work: it holds what it must, or it must hold nothing."""
        return not self.wanted or self.lease is not None

    def uncovered(self, licences: Mapping[str, int] | list[str] | None) -> dict[str, int]:
        """What of a task's licences the worker's seat does not cover, to be leased for it."""
        if not licences:
            return {}
        needs = parse_licence_needs(licences, "licences")
        held: dict[str, int] = (self.lease or {}).get("licences") or {}
        return {name: count - held.get(name, 0) for name, count in needs.items()
                if count > held.get(name, 0)}

    async def keep(self, call: Call, interval: float,
                   changed: Callable[[bool], Awaitable[None]]) -> None:
        """Hold the seat, asking again every `interval`; `changed(held)` when that flips.

        Asking again is safe (the same lease id gets the same lease back) and is how a seat the
        license service gave back while we were cut off is noticed.
        """
        if not self.wanted:
            return
        while True:
            before = self.lease is not None
            try:
                self.lease = await call("license", "hold_for_worker", attempts=1,
                                        optional_service=True, lease_id=self.lease_id,
                                        worker_id=self.worker_id, host=self.host,
                                        licences=self.wanted)
            except (RpcUnavailable, ServiceUnknown) as exc:
                # Not answered is not refused: what we hold stays held until we are told.
                log.warning("could not ask for the licences this worker holds: %s", exc)
            except Exception as exc:  # refused outright: an unknown licence, say
                log.error("the licences this worker holds were refused: %s", exc)
                self.lease = None
            held = self.lease is not None
            if held != before:
                wanted = ", ".join(f"{count} {name}" for name, count in self.wanted.items())
                log.info("holding %s for this worker's life" if held
                         else "not holding %s: taking no work until they are free", wanted)
                await changed(held)
            await asyncio.sleep(interval)

    async def give_back(self, call: Call) -> None:
        """Release the seat as the worker leaves (one try: leaving the registry frees it too)."""
        if self.lease is None:
            return
        self.lease = None
        try:
            await call("license", "release", attempts=1, optional_service=True,
                       lease_id=self.lease_id)
        except (RpcUnavailable, ServiceUnknown) as exc:
            log.warning("could not give back the licences this worker held: %s", exc)
