"""The job spec a pipeline submits, its validation, and its expansion into concrete tasks."""

from __future__ import annotations

import json
import math
import re
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
from shared.frames import Chunk, chunk_frames, count_frames, parse_frame_range, substitute
from shared.licences import parse_licence_needs
from shared.notify import NotifySpec, job_targets
from shared.resources import parse_size
from shared.retention import RetentionSpec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_ARGUMENT_BYTES = 131071
"""Linux refuses a single argv item or environment string of 128 KiB or more (MAX_ARG_STRLEN)."""
MAX_INTEGER = 2**63 - 1
"""What every database Corral supports stores as an integer."""
MAX_NESTING = 32
MAX_TIMEOUT_SECONDS = 366 * 86400
MIN_TIMEOUT_SECONDS = 0.001
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class RetryPolicy(BaseModel):
    """How a failed task is tried again."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: StrictInt = Field(default=1, ge=1, le=100)
    delay_seconds: StrictInt | StrictFloat = Field(default=0, ge=0, le=86400)
    on_exit_codes: list[StrictInt] | None = None
    """Retry only on these exit codes; None retries any failure."""
    memory_factor: StrictInt | StrictFloat = Field(default=1.0, ge=1.0, le=16.0)
    """After an out-of-memory kill, the next attempt asks for this much more memory."""


class ResourceSpec(BaseModel):
    """Amounts of a host's resources: cores, memory (512M, 64G, 1.5T), GPUs, custom counts."""

    model_config = ConfigDict(extra="forbid")

    cores: StrictInt | StrictFloat = Field(default=1, ge=0, le=4096)
    memory: StrictStr | StrictInt | None = None
    gpus: StrictInt = Field(default=0, ge=0, le=64)
    custom: dict[StrictStr, StrictInt | StrictFloat] = Field(default_factory=dict)


class _Runnable(BaseModel):
    """What tasks and layers share: the command and how to run it; unset fields take the job's."""

    model_config = ConfigDict(extra="forbid")

    command: list[StrictStr] = Field(min_length=1, max_length=4096)
    pool: StrictStr | None = Field(default=None, min_length=1, max_length=64,
                                   pattern=NAME_PATTERN)
    shell: StrictBool = False
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    cwd: StrictStr | None = None
    timeout: StrictInt | StrictFloat | None = Field(default=None, ge=MIN_TIMEOUT_SECONDS,
                                                    le=MAX_TIMEOUT_SECONDS)
    stall_timeout: StrictInt | StrictFloat | None = Field(default=None, ge=MIN_TIMEOUT_SECONDS,
                                                          le=MAX_TIMEOUT_SECONDS)
    resources: ResourceSpec | None = None
    preferred: ResourceSpec | None = None
    licences: Any = None
    """{"houdini": 1} or ["houdini"]: licences held while the task runs (parse_licence_needs)."""
    retry: RetryPolicy | None = None

    @field_validator("command")
    @classmethod
    def _program_named(cls, command: list[str]) -> list[str]:
        if not command[0].strip():
            raise ValueError("the first item (the program) is empty")
        for position, item in enumerate(command):
            size = len(item.encode("utf-8", "surrogatepass"))
            if size > MAX_ARGUMENT_BYTES:
                raise ValueError(f"item {position} is {size} bytes, more than the "
                                 f"{MAX_ARGUMENT_BYTES} one argument may have")
        return command


class TaskSpec(_Runnable):
    """One process to run: an argv list, never a shell string unless `shell` says so."""

    name: StrictStr | None = Field(default=None, max_length=200)
    depends_on: list[StrictInt] = Field(default_factory=list)
    """Positions (0-based) of tasks in this job's list that must be done first."""

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str | None) -> str | None:
        return _printable(name)


class LayerDependency(BaseModel):
    """A layer waits for another: all of it, or frame by frame (chunk k waits only for the
    chunks covering its frames)."""

    model_config = ConfigDict(extra="forbid")

    layer: StrictStr
    per_frame: StrictBool = False


class LayerSpec(_Runnable):
    """A command template run once per chunk of a frame range (or once, with no frames)."""

    name: StrictStr = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    frames: StrictStr | None = None
    chunk: StrictInt = Field(default=1, ge=1)
    depends_on: list[StrictStr | LayerDependency] = Field(default_factory=list)


class JobSpec(BaseModel):
    """A job: defaults shared by its tasks, and either a plain list of tasks or layers."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] | None = None
    layers: list[LayerSpec] | None = None
    depends_on: list[StrictInt] = Field(default_factory=list)
    """Ids of jobs that must be done before any task of this one starts."""
    name: StrictStr = Field(default="job", min_length=1, max_length=200)
    user: StrictStr = Field(default="anonymous", min_length=1, max_length=64, pattern=NAME_PATTERN)
    pool: StrictStr = Field(default="cpu", min_length=1, max_length=64, pattern=NAME_PATTERN)
    priority: StrictInt = 50
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    cwd: StrictStr | None = None
    timeout: StrictInt | StrictFloat | None = Field(default=None, ge=MIN_TIMEOUT_SECONDS,
                                                    le=MAX_TIMEOUT_SECONDS)
    stall_timeout: StrictInt | StrictFloat | None = Field(default=None, ge=MIN_TIMEOUT_SECONDS,
                                                          le=MAX_TIMEOUT_SECONDS)
    """Kill a task that prints nothing for this many seconds ("stalled")."""
    max_host_failures: StrictInt = Field(default=3, ge=1)
    """A host that fails this many of the job's attempts takes no more of its tasks."""
    resources: ResourceSpec | None = None
    """Minimum amounts each task needs; a task gets min(free, max(preferred, minimum))."""
    preferred: ResourceSpec | None = None
    licences: Any = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    submission_key: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    """The caller's name for this submission: submitting again under the same key returns the
    job the first submission made instead of making another (a retry after a timeout)."""
    keep: StrictBool = False
    """Keep the job's logs, results, scratch and record for good (the cleanup service skips it)."""
    retention: RetentionSpec | None = None
    """The job's own delays (seconds after it ended, or "never") instead of the farm's."""
    notify: NotifySpec | None = None
    """Webhooks and e-mail addresses told of the job's end (README: Notifications)."""

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        return _printable(name) or name


def _printable(name: str | None) -> str | None:
    if name is not None and _CONTROL.search(name):
        raise ValueError("must not contain control characters (newlines, tabs, escapes)")
    return name


def check_plain_data(value: Any, path: str = "spec", depth: int = 0) -> None:
    """Refuse what no field may hold, wherever it is: NUL characters and lone surrogates in any
    text (a process cannot take them, and not every database can store them), integers past
    what a database stores, numbers that are not finite (JSON decoders accept NaN and
    Infinity), and nesting deeper than any spec needs."""
    if depth > MAX_NESTING:
        raise InvalidSpec(f"{path}: is nested more than {MAX_NESTING} levels deep")
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if abs(value) > MAX_INTEGER:
            raise InvalidSpec(f"{path}: {value:.3g} is out of range (at most {MAX_INTEGER})"
                              if abs(value) < 10**300 else f"{path}: is out of range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSpec(f"{path}: must be a finite number, not {value}")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                _check_text(key, f"{path} key {key[:40]!r}")
            check_plain_data(item, f"{path}.{key}" if path != "spec" else str(key), depth + 1)
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            check_plain_data(item, f"{path}[{position}]", depth + 1)


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise InvalidSpec(f"{path}: must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSpec(f"{path}: is not valid Unicode (a lone surrogate)") from None


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
    stall_timeout: float | None = None
    resources: dict[str, Any] | None = None
    """{"cores", "memory_mb", "gpus", "custom"}: the minimum; None asks for nothing."""
    preferred: dict[str, Any] | None = None
    licences: dict[str, int] | None = None
    """Licence name -> count, held while the task runs; None needs none."""
    memory_factor: float = 1.0
    pool: str | None = None
    """None: the job's pool."""
    layer: str | None = None
    frames: tuple[int, ...] | None = None
    depends_on: tuple[int, ...] = ()
    """Indexes of tasks of the same job that must be done first."""
    depends_on_layers: tuple[str, ...] = ()
    """Layers of the same job that must be wholly done first."""


@dataclass(frozen=True)
class JobPlan:
    """A validated job ready to be written in one transaction."""

    name: str
    user: str
    pool: str
    priority: int
    band: str
    tasks: list[TaskPlan] = field(default_factory=list)
    depends_on_jobs: tuple[int, ...] = ()
    max_host_failures: int = 3
    submission_key: str | None = None
    keep: bool = False
    retention: dict[str, float | str] | None = None
    """Only the kinds the spec named: kind -> seconds, or "never"."""
    notify: tuple[dict[str, Any], ...] = ()
    """Targets told of the job's end: {kind, address, events, source} (shared.notify)."""


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
                      max_tasks: int, can_email: bool = False) -> JobPlan:
    """Turn untrusted spec data into a JobPlan, or raise InvalidSpec naming the first bad field.

    `can_email`: the farm has an SMTP server, so `notify.emails` may be given.
    """
    if not isinstance(raw, dict):
        raise InvalidSpec(f"spec: must be a JSON object, got {type(raw).__name__}")
    check_plain_data(raw)
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
    if (spec.tasks is None) == (spec.layers is None) or not (spec.tasks or spec.layers):
        raise InvalidSpec("tasks: give a non-empty list of tasks or of layers (not both)")
    _check_env_size("env", spec.env, max_env_bytes)
    if len(set(spec.depends_on)) != len(spec.depends_on):
        raise InvalidSpec("depends_on: a job is listed twice")
    if spec.notify is not None and spec.notify.emails and not can_email:
        raise InvalidSpec("notify.emails: this farm has no SMTP server configured "
                          "(CORRAL.notifications.smtp_host); use notify.webhooks")
    if spec.tasks is not None:
        tasks = _plan_tasks(spec, max_env_bytes)
    else:
        tasks = _plan_layers(spec, max_env_bytes, max_tasks)
    if len(tasks) > max_tasks:
        raise InvalidSpec(f"tasks: {len(tasks)} tasks is more than the limit of {max_tasks}")
    return JobPlan(name=spec.name, user=spec.user, pool=spec.pool, priority=spec.priority,
                   band=band.name, tasks=tasks, depends_on_jobs=tuple(spec.depends_on),
                   max_host_failures=spec.max_host_failures,
                   submission_key=spec.submission_key, keep=spec.keep,
                   retention=(spec.retention.model_dump(exclude_none=True) or None
                              if spec.retention is not None else None),
                   notify=job_targets(spec.notify))


def _defaults(spec: JobSpec, item: _Runnable, path: str,
              max_env_bytes: int) -> dict[str, Any]:
    """The fields every task takes from its own spec or, failing that, from the job."""
    env = {**spec.env, **item.env}
    _check_env_size(f"{path}.env", env, max_env_bytes)
    if item.shell and len(item.command) != 1:
        raise InvalidSpec(f"{path}.command: with shell=true it must be one string")
    retry = item.retry or spec.retry
    timeout = item.timeout or spec.timeout
    stall = item.stall_timeout or spec.stall_timeout
    minimum = item.resources or spec.resources
    preferred = item.preferred or spec.preferred
    if item.licences is not None:
        licences = parse_licence_needs(item.licences, f"{path}.licences") or None
    elif spec.licences is not None:
        licences = parse_licence_needs(spec.licences, "licences") or None
    else:
        licences = None
    return {"shell": item.shell, "env": env, "cwd": item.cwd or spec.cwd,
            "pool": item.pool or spec.pool,
            "timeout": float(timeout) if timeout else None,
            "stall_timeout": float(stall) if stall else None,
            "resources": _amounts(minimum, f"{path}.resources" if item.resources
                                  else "resources"),
            "preferred": _amounts(preferred, f"{path}.preferred" if item.preferred
                                  else "preferred"),
            "licences": licences,
            "memory_factor": float(retry.memory_factor),
            "max_attempts": retry.max_attempts, "retry_delay": float(retry.delay_seconds),
            "retry_exit_codes": (list(retry.on_exit_codes)
                                 if retry.on_exit_codes is not None else None)}


def _amounts(resources: ResourceSpec | None, path: str) -> dict[str, Any] | None:
    """Plain amounts with memory in megabytes, or None when nothing was asked for."""
    if resources is None:
        return None
    memory = (parse_size(resources.memory, field_path=f"{path}.memory")
              if resources.memory is not None else 0)
    return {"cores": float(resources.cores), "memory_mb": memory, "gpus": resources.gpus,
            "custom": dict(resources.custom)}


def _plan_tasks(spec: JobSpec, max_env_bytes: int) -> list[TaskPlan]:
    assert spec.tasks is not None
    count = len(spec.tasks)
    graph: dict[int, list[int]] = {}
    tasks = []
    for index, task in enumerate(spec.tasks):
        path = f"tasks[{index}]"
        for position, other in enumerate(task.depends_on):
            if not 0 <= other < count:
                raise InvalidSpec(f"{path}.depends_on[{position}]: there is no task {other} "
                                  f"(tasks are numbered 0 to {count - 1})")
        graph[index] = list(task.depends_on)
        tasks.append(TaskPlan(index=index, name=task.name or f"{spec.name}.{index}",
                              command=list(task.command),
                              depends_on=tuple(dict.fromkeys(task.depends_on)),
                              **_defaults(spec, task, path, max_env_bytes)))
    cycle = find_cycle(graph)
    if cycle:
        raise InvalidSpec("tasks: dependency cycle " + " -> ".join(map(str, cycle)))
    return tasks


def _plan_layers(spec: JobSpec, max_env_bytes: int, max_tasks: int) -> list[TaskPlan]:
    assert spec.layers is not None
    by_name: dict[str, int] = {}
    for index, layer in enumerate(spec.layers):
        if layer.name in by_name:
            raise InvalidSpec(f"layers[{index}].name: {layer.name!r} is used twice")
        by_name[layer.name] = index
    dependencies: list[list[LayerDependency]] = []
    for index, layer in enumerate(spec.layers):
        found = []
        for position, raw in enumerate(layer.depends_on):
            dependency = LayerDependency(layer=raw) if isinstance(raw, str) else raw
            where = f"layers[{index}].depends_on[{position}]"
            if dependency.layer not in by_name:
                raise InvalidSpec(f"{where}: there is no layer named {dependency.layer!r}")
            other = spec.layers[by_name[dependency.layer]]
            if dependency.per_frame and (layer.frames is None or other.frames is None):
                raise InvalidSpec(f"{where}: per_frame needs frames on both layers")
            found.append(dependency)
        dependencies.append(found)
    cycle = find_cycle({layer.name: [d.layer for d in deps]
                        for layer, deps in zip(spec.layers, dependencies, strict=True)})
    if cycle:
        raise InvalidSpec("layers: dependency cycle " + " -> ".join(cycle))

    tasks: list[TaskPlan] = []
    first_task: dict[str, int] = {}
    chunks_of: dict[str, list[Chunk | None]] = {}
    for index, layer in enumerate(spec.layers):
        path = f"layers[{index}]"
        chunks = _layer_chunks(layer, path, max_tasks - len(tasks))
        if len(tasks) + len(chunks) > max_tasks:
            raise InvalidSpec(f"{path}: the job makes more than the limit of {max_tasks} tasks")
        chunks_of[layer.name] = chunks
        first_task[layer.name] = len(tasks)
        defaults = _defaults(spec, layer, path, max_env_bytes)
        for position, chunk in enumerate(chunks):
            command = list(layer.command) if chunk is None else substitute(layer.command, chunk)
            tasks.append(TaskPlan(
                index=len(tasks), name=_chunk_name(layer.name, chunk, len(chunks), position),
                command=command, layer=layer.name,
                frames=None if chunk is None else chunk.frames, **defaults))
    # Dependencies point backwards or forwards in the list, so they are filled in afterwards.
    for layer, deps in zip(spec.layers, dependencies, strict=True):
        whole = tuple(d.layer for d in deps if not d.per_frame)
        per_frame = [d.layer for d in deps if d.per_frame]
        start = first_task[layer.name]
        for offset, chunk in enumerate(chunks_of[layer.name]):
            needed: list[int] = []
            for upstream in per_frame:
                needed.extend(_covering_tasks(chunk, chunks_of[upstream], first_task[upstream]))
            task = tasks[start + offset]
            tasks[start + offset] = TaskPlan(**{**task.__dict__,
                                                "depends_on": tuple(dict.fromkeys(needed)),
                                                "depends_on_layers": whole})
    return tasks


def _layer_chunks(layer: LayerSpec, path: str, room: int) -> list[Chunk | None]:
    """The layer's chunks; counted before they are made, so a huge range costs nothing."""
    if layer.frames is None:
        return [None]
    try:
        chunks = -(-count_frames(layer.frames) // layer.chunk)
        if chunks > room:
            raise InvalidSpec(f"frames: {layer.frames[:40]!r} in chunks of {layer.chunk} makes "
                              f"{chunks} tasks, more than the {room} the job may still have")
        return list(chunk_frames(parse_frame_range(layer.frames), layer.chunk))
    except InvalidSpec as exc:
        # frames.py names the field as at the top level; here it lives inside a layer.
        raise InvalidSpec(f"{path}.{exc.message}") from None


def _chunk_name(layer: str, chunk: Chunk | None, count: int, position: int) -> str:
    if chunk is None:
        return layer
    if chunk.start == chunk.end:
        return f"{layer}.{chunk.start}"
    if chunk.regular:
        step = "" if abs(chunk.step) == 1 else f"x{chunk.step}"
        return f"{layer}.{chunk.start}-{chunk.end}{step}"
    return f"{layer}.chunk{position + 1}of{count}"


def _covering_tasks(chunk: Chunk | None, others: list[Chunk | None], first: int) -> list[int]:
    """Tasks of another layer holding any frame of this chunk (frame-by-frame dependency)."""
    if chunk is None:
        return []
    wanted = set(chunk.frames)
    return [first + position for position, other in enumerate(others)
            if other is not None and wanted.intersection(other.frames)]


def find_cycle(graph: dict[Any, list[Any]]) -> list[Any]:
    """A dependency cycle as [a, b, ..., a], or [] when there is none (iterative DFS)."""
    state: dict[Any, int] = {}  # 1: on the current path, 2: finished
    for root in graph:
        if state.get(root):
            continue
        path: list[Any] = [root]
        stack = [iter(graph.get(root, ()))]
        state[root] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                state[path.pop()] = 2
                continue
            if state.get(step) == 1:
                return path[path.index(step):] + [step]
            if not state.get(step):
                state[step] = 1
                path.append(step)
                stack.append(iter(graph.get(step, ())))
    return []


def _check_env_size(path: str, env: dict[str, str], limit: int) -> None:
    size = len(json.dumps(env).encode())
    if size > limit:
        raise InvalidSpec(f"{path}: {size} bytes of environment is more than the limit of {limit}")
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise InvalidSpec(f"{path}: {key!r} is not a valid variable name")
