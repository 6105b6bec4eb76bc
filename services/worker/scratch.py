"""A task attempt's own scratch folder under the storage root (`$CORRAL_SCRATCH`), removed when
the attempt ends unless its spec keeps it, and the worker's wait while the root is short of space."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from shared import storage

log = logging.getLogger("corral.worker")

SCRATCH_VARIABLE = "CORRAL_SCRATCH"


@asynccontextmanager
async def attempt_scratch(root: Path, claim: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
    """Make the attempt's scratch folder; yield the payload's variable naming it."""
    relative = storage.scratch_path(claim["job_id"], claim["task_id"], claim["attempt"])
    path = Path(root) / relative
    await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
    try:
        yield {SCRATCH_VARIABLE: str(path)}
    finally:
        if not claim.get("keep_scratch"):
            # A big scratch folder takes a while: off the event loop, so heartbeats go on.
            removal = await asyncio.to_thread(storage.remove, root, relative)
            for problem in removal.errors + removal.left_alone:
                # The cleanup service removes the job's scratch later, with its retention.
                log.warning("scratch of task %s: %s", claim["task_id"], problem)


async def storage_shortage(root: Path, threshold_bytes: int) -> str | None:
    """Why no new task should start here now (the storage root is short of space), or None."""
    _free, reason = await asyncio.to_thread(storage.shortage, root, threshold_bytes)
    return reason


async def wait_for_room(root: Path, threshold_bytes: int, interval: float,
                        stop: asyncio.Event) -> None:
    """Return once the storage root has room again (or `stop` is set), saying why it waits."""
    told = False
    while not stop.is_set():
        reason = await storage_shortage(root, threshold_bytes)
        if reason is None:
            if told:
                log.info("storage root has room again: taking tasks")
            return
        if not told:
            log.warning("%s: taking no new tasks until there is room", reason)
            told = True
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
