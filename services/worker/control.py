"""A worker's obedience to what the registry wants of it: take work, drain, be disabled, or stop.

The registry answers every registration with the wanted state (shared.worker_control), sends a
change of it by its `worker_controlled` event, and answers a heartbeat sent by RPC with it; this
module turns a change of it into the worker's actions: stop
consuming its band queues (drain, disable), consume again (enable), or leave (stop: after the
running task, or at once with the task handed back uncharged). The running task of a drained or
disabled worker finishes as usual. It also gives a worker started without `--name` its name.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from shared.worker_control import Wanted, takes_work

log = logging.getLogger("corral.worker")


class Obedience:
    """What is wanted of one worker, and what it does when that changes."""

    def __init__(self, stop_consuming: Callable[[], Awaitable[None]],
                 start_consuming: Callable[[], Awaitable[None]],
                 stop: Callable[[bool], None]) -> None:
        self.wanted = Wanted.ACTIVE
        self._stop_consuming = stop_consuming
        self._start_consuming = start_consuming
        self._stop = stop  # True: hand the running task back first
        self._stopping = False

    @property
    def takes_work(self) -> bool:
        return takes_work(self.wanted)

    def state(self, busy: bool) -> str:
        """The state the worker reports in its heartbeat (the registry's WorkerState)."""
        if self.takes_work:
            return "busy" if busy else "idle"
        if busy or self.wanted in (Wanted.STOP, Wanted.STOP_NOW):
            return "draining"
        return "drained" if self.wanted is Wanted.DRAIN else "disabled"

    async def hear_event(self, payload: Mapping[str, Any], worker_id: str) -> None:
        """Act on the registry's `worker_controlled` event if it names this worker."""
        workers = payload.get("workers") if isinstance(payload, Mapping) else None
        if isinstance(workers, Mapping) and worker_id in workers:
            await self.hear({"wanted": workers[worker_id]})

    async def hear(self, reply: Mapping[str, Any] | None) -> None:
        """Act on the `wanted` of a registry reply, if it says something new."""
        if not reply or "wanted" not in reply:
            return  # an older registry: it wants nothing of us
        try:
            wanted = Wanted(reply["wanted"])
        except ValueError:
            log.warning("ignoring a wanted state this worker does not know: %r", reply["wanted"])
            return
        if wanted is self.wanted:
            return
        log.info("the registry wants this worker to %s (was %s)", wanted, self.wanted)
        self.wanted = wanted
        if wanted is Wanted.ACTIVE:
            await self._start_consuming()
            return
        await self._stop_consuming()
        if wanted in (Wanted.STOP, Wanted.STOP_NOW) and not self._stopping:
            self._stopping = True
            self._stop(wanted is Wanted.STOP_NOW)


class NameClaim:
    """The lowest free `<pool>-<n>` on this host, held by a lock file while the worker runs.

    The lock goes with the process however it ends, so a worker started after one died takes
    the name it had (and with it what was wanted of it).
    """

    def __init__(self, host_dir: Path, pool: str) -> None:
        self._directory = host_dir / "workers"
        self._pool = pool
        self._held: int | None = None

    def take(self) -> str:
        self._directory.mkdir(parents=True, exist_ok=True)
        number = 1
        while True:
            name = f"{self._pool}-{number}"
            descriptor = os.open(self._directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                number += 1
                continue
            self._held = descriptor
            return name

    def release(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None
