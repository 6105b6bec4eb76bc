"""The REST API's request models: they validate every query and body and make its OpenAPI document."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from shared.spec import NAME_PATTERN

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
BulkOperation = Literal["pause", "resume", "cancel", "retry", "priority"]
WorkerState = Literal["drain", "disable", "enable", "stop"]
MEGABYTE = 1 << 20


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobsQuery(_Model):
    """Which jobs: filters and a page (newest first)."""

    state: JobState | None = None
    user: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN)
    name: str | None = Field(default=None, min_length=1, max_length=200,
                             description="a glob on the job's name, such as shot010*")
    page: int = Field(default=1, ge=1, le=1_000_000)
    page_size: int = Field(default=50, ge=1, le=1000)


class JobQuery(_Model):
    """How many of the job's tasks to include, from which position."""

    task_limit: int = Field(default=1000, ge=0, le=1000)
    task_offset: int = Field(default=0, ge=0, le=10_000_000)


class PauseBody(_Model):
    kill: StrictBool = Field(default=False, description="stop running tasks now (uncharged)")


class PriorityBody(_Model):
    priority: StrictInt = Field(ge=-1_000_000, le=1_000_000)


class BulkBody(_Model):
    """One operation on every job matching the filter (at least one filter)."""

    operation: BulkOperation
    user: StrictStr | None = Field(default=None, min_length=1, max_length=64,
                                   pattern=NAME_PATTERN)
    state: JobState | None = None
    name_pattern: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    job_ids: list[StrictInt] | None = Field(default=None, max_length=10_000)
    kill: StrictBool = False
    priority: StrictInt | None = Field(default=None, ge=-1_000_000, le=1_000_000)


class TemplateBody(_Model):
    """A template's command-line arguments, as `corral submit TEMPLATE ARGS...` takes them."""

    args: list[StrictStr] = Field(min_length=1, max_length=1000)
    user: StrictStr | None = Field(default=None, min_length=1, max_length=64,
                                   pattern=NAME_PATTERN)


class LogQuery(_Model):
    """The end of a task's log (`tail` bytes), or `length` bytes from `offset`."""

    attempt: int | None = Field(default=None, ge=1, le=10_000)
    tail: int | None = Field(default=None, ge=1, le=4 * MEGABYTE)
    offset: int | None = Field(default=None, ge=0, le=1 << 50)
    length: int = Field(default=64 * 1024, ge=1, le=4 * MEGABYTE)


class WorkerStateBody(_Model):
    """drain: finish the running task, take no more; disable: take nothing; enable: take work
    again; stop: leave after the running task, or with `now` hand it back (uncharged) first."""

    state: WorkerState
    now: StrictBool = False


class LicenceBody(_Model):
    total: StrictInt = Field(ge=0, le=1_000_000)
    per_host: StrictBool | None = None


class LoginBody(_Model):
    username: StrictStr = Field(min_length=1, max_length=64)
    password: StrictStr = Field(min_length=1, max_length=1024)


class UploadQuery(_Model):
    overwrite: bool = False


class AuditQuery(_Model):
    limit: int = Field(default=100, ge=1, le=1000)
