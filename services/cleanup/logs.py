"""Reading a task attempt's log from the storage root, a page at a time, for `corral log`:
only files under the root, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared import storage
from shared.errors import NotFound

MAX_PAGE = 1024 * 1024


def pick_attempt(task: dict[str, Any], attempt: int | None) -> dict[str, Any]:
    """The attempt asked for (by number), or the latest one, from the scheduler's get_task."""
    attempts = task.get("attempts") or []
    if not attempts:
        raise NotFound(f"task {task['id']} has not started yet: it has no log")
    if attempt is None:
        return dict(max(attempts, key=lambda a: (a["number"], a["id"])))
    for candidate in reversed(attempts):
        if candidate["number"] == attempt:
            return dict(candidate)
    numbers = ", ".join(str(a["number"]) for a in attempts)
    raise NotFound(f"task {task['id']} has no attempt {attempt} (attempts: {numbers})")


def log_location(root: Path, task: dict[str, Any], attempt: dict[str, Any]) -> str:
    """Where the attempt's log is, relative to the root: as recorded at its end, or (while it
    runs) where the worker writes it. OutsideStorage for a recorded path outside the root."""
    if attempt.get("log_path"):
        return storage.relative_to_root(root, attempt["log_path"])
    return storage.log_path(task["job_id"], task["id"], attempt["number"])


def read_page(root: Path, relative: str, offset: int, limit: int) -> tuple[bytes, int]:
    """Up to `limit` bytes from `offset`, and the file's size; missing: nothing, size 0."""
    parts = storage.checked_parts(relative)
    limit = max(1, min(int(limit), MAX_PAGE))
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    directory = os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    descriptors = [directory]
    try:
        for name in parts[:-1]:
            directory = os.open(name, flags | os.O_DIRECTORY, dir_fd=directory)
            descriptors.append(directory)
        handle = os.open(parts[-1], flags, dir_fd=directory)
    except FileNotFoundError:
        return b"", 0
    finally:
        for descriptor in reversed(descriptors):
            os.close(descriptor)
    try:
        size = os.fstat(handle).st_size
        return os.pread(handle, limit, max(0, int(offset))), size
    finally:
        os.close(handle)
