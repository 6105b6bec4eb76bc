"""The heartbeat message a worker publishes to the registry's queue (corral.heartbeats), without a reply.

One schema, Heartbeat, in a JSON body; the worker credential travels in the message header
`nameko.auth_token` (shared.identity.CONTEXT_KEY), as it does on an RPC call, and the registry
refuses a heartbeat without it. Besides what the `worker_heartbeat` RPC carries (state, current
task) it says what the worker believes is wanted of it, so the registry can tell it again when
it missed a `worker_controlled` event, and what the worker registered with, so a registry that
lost the worker's row takes it back from the heartbeat alone.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.worker_control import Wanted

INT32_MAX = 2**31 - 1
"""The largest task id or pid a heartbeat may name: what every database's integer column holds,
so no heartbeat can fail the batch it is written in."""


class Heartbeat(BaseModel):
    """One worker's heartbeat, as published to shared.bands.HEARTBEATS_QUEUE."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    worker_id: str = Field(min_length=1, max_length=200)
    state: str = Field(max_length=40)  # services.registry.store.WorkerState
    current_task: int | None = Field(default=None, ge=0, le=INT32_MAX)
    wanted: Wanted  # what the worker is obeying now
    host: str = Field(min_length=1, max_length=255)
    pool: str = Field(min_length=1, max_length=200)
    bands: list[str] = Field(max_length=50)
    pid: int | None = Field(default=None, ge=0, le=INT32_MAX)
    name: str | None = Field(default=None, max_length=200)
    sent_at: float  # the worker's clock, for a person reading the queue: the registry uses its own
