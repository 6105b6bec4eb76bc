"""How long a finished job's things are kept: the spec's `retention`, the event payloads that carry
it, and the rule that picks a job's own delay over the farm's."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

KINDS = ("logs", "scratch", "results", "records")
"""What retention covers: files under the storage root (logs, scratch, results) and job records."""

Kind = Literal["logs", "scratch", "results", "records"]
Delay = Annotated[StrictInt | StrictFloat, Field(ge=0)] | Literal["never"] | None


class RetentionSpec(BaseModel):
    """A job's own retention, in seconds after it ended; "never" keeps that kind for good."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logs: Delay = Field(default=None)
    scratch: Delay = Field(default=None)
    results: Delay = Field(default=None)
    records: Delay = Field(default=None)


class JobFinished(BaseModel):
    """The payload of `job_finished`: a job reached done, failed or cancelled at `finished_at`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: StrictInt
    state: Literal["done", "failed", "cancelled"]
    user: str
    finished_at: float | None = None
    """On the scheduler's database clock; an older scheduler did not say (then: when heard)."""
    keep: StrictBool = False
    retention: dict[str, float | str] | None = None


class ResultCollected(BaseModel):
    """The payload of `result_collected`: the result of a task's attempt was read by its owner."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: StrictInt
    job_id: StrictInt
    attempt: StrictInt
    collected_at: float


class StorageChanged(BaseModel):
    """The payload of `storage_changed`: the storage root's free space crossed the threshold."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    free_bytes: StrictInt
    threshold_bytes: StrictInt
    low: StrictBool
    reason: str | None = None


def delay_for(kind: Kind, farm_default: float | None, keep: bool,
              own: dict[str, float | str] | None) -> float | None:
    """Seconds after a job ended that `kind` is removed; None keeps it for good.

    `keep: true` keeps everything; a job's own `retention.<kind>` beats the farm's setting
    (a number of seconds, or "never").
    """
    if keep:
        return None
    if own is not None and own.get(kind) is not None:
        value = own[kind]
        return None if value == "never" else float(value)
    return farm_default


def human_size(count: float) -> str:
    """Bytes as a person reads them: 1.2 GB, 512 MB, 3 KB."""
    for unit, size in (("TB", 1024 ** 4), ("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if count >= size:
            return f"{count / size:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{int(count)} B"
