"""The job spec a pipeline submits, its validation, and its expansion into concrete tasks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from shared.bands import Band, band_for_priority
from shared.errors import InvalidSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class RetryPolicy(BaseModel):
    """How a failed task is tried again."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: StrictInt = Field(default=1, ge=1, le=100)
    delay_seconds: StrictInt | StrictFloat = Field(default=0, ge=0, le=86400)
    on_exit_codes: list[StrictInt] | None = None
    """Retry only on these exit codes; None retries any failure."""


class TaskSpec(BaseModel):
    """One process to run: an argv list, never a shell string unless `shell` says so."""

    model_config = ConfigDict(extra="forbid")

    command: list[StrictStr] = Field(min_length=1, max_length=4096)
    name: StrictStr | None = Field(default=None, max_length=200)
    shell: StrictBool = False
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    cwd: StrictStr | None = None
    timeout: StrictInt | StrictFloat | None = Field(default=None, gt=0)
    retry: RetryPolicy | None = None

    @field_validator("command")
    @classmethod
    def _program_named(cls, command: list[str]) -> list[str]:
        if not command[0].strip():
            raise ValueError("the first item (the program) is empty")
        return command


class JobSpec(BaseModel):
    """A job: defaults shared by its tasks, and the tasks themselves."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(min_length=1)
    name: StrictStr = Field(default="job", min_length=1, max_length=200)
    user: StrictStr = Field(default="anonymous", min_length=1, max_length=64, pattern=NAME_PATTERN)
    pool: StrictStr = Field(default="cpu", min_length=1, max_length=64, pattern=NAME_PATTERN)
    priority: StrictInt = 50
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    cwd: StrictStr | None = None
    timeout: StrictInt | StrictFloat | None = Field(default=None, gt=0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class TaskPlan:
    """A task as the scheduler stores it: every job default already applied."""

    index: int
    name: str
    command: list[str]
    shell: bool
    env: dict[str, str]
    cwd: str | None
    timeout: float | None
    max_attempts: int
    retry_delay: float
    retry_exit_codes: list[int] | None


@dataclass(frozen=True)
class JobPlan:
    """A validated job ready to be written in one transaction."""

    name: str
    user: str
    pool: str
    priority: int
    band: str
    tasks: list[TaskPlan] = field(default_factory=list)


def _field_path(location: Iterable[Any]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "spec"


def _describe(error: dict[str, Any]) -> str:
    kind = error.get("type")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    return str(error.get("msg", "is invalid")).replace("Value error, ", "")


def validate_job_spec(raw: Any, bands: Iterable[Band], *, max_env_bytes: int,
                      max_tasks: int) -> JobPlan:
    """Turn untrusted spec data into a JobPlan, or raise InvalidSpec naming the first bad field."""
    if not isinstance(raw, dict):
        raise InvalidSpec(f"spec: must be a JSON object, got {type(raw).__name__}")
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = _field_path(error["loc"])
        raise InvalidSpec(f"{path}: {_describe(dict(error))}") from None
    band = band_for_priority(bands, spec.priority)
    if band is None:
        ranges = ", ".join(f"{b.name} {b.low}-{b.high}" for b in bands)
        raise InvalidSpec(f"priority: {spec.priority} is outside every band ({ranges})")
    if len(spec.tasks) > max_tasks:
        raise InvalidSpec(f"tasks: {len(spec.tasks)} tasks is more than the limit of {max_tasks}")
    _check_env_size("env", spec.env, max_env_bytes)
    tasks = []
    for index, task in enumerate(spec.tasks):
        _check_env_size(f"tasks[{index}].env", {**spec.env, **task.env}, max_env_bytes)
        if task.shell and len(task.command) != 1:
            raise InvalidSpec(f"tasks[{index}].command: with shell=true it must be one string")
        retry = task.retry or spec.retry
        tasks.append(TaskPlan(
            index=index,
            name=task.name or f"{spec.name}.{index}",
            command=list(task.command),
            shell=task.shell,
            env={**spec.env, **task.env},
            cwd=task.cwd or spec.cwd,
            timeout=float(task.timeout) if task.timeout else (
                float(spec.timeout) if spec.timeout else None),
            max_attempts=retry.max_attempts,
            retry_delay=float(retry.delay_seconds),
            retry_exit_codes=list(retry.on_exit_codes) if retry.on_exit_codes is not None else None,
        ))
    return JobPlan(name=spec.name, user=spec.user, pool=spec.pool, priority=spec.priority,
                   band=band.name, tasks=tasks)


def _check_env_size(path: str, env: dict[str, str], limit: int) -> None:
    size = len(json.dumps(env).encode())
    if size > limit:
        raise InvalidSpec(f"{path}: {size} bytes of environment is more than the limit of {limit}")
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise InvalidSpec(f"{path}: {key!r} is not a valid variable name")
