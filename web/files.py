"""Reading and writing files under the storage root for the monitor, never outside it.

Every path a request names (a log, a result, an upload, a download, a thumbnail) goes through
`inside`, which refuses absolute paths, `..`, encoded separators and NUL bytes, then resolves
symlinks and refuses anything whose real path leaves the root; files are then opened with
O_NOFOLLOW so a symlink planted after the check is not followed either.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from shared.templates import _sequence_pattern

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
CHUNK = 64 * 1024


class OutsideStorage(Exception):
    """A path names something outside the storage root, or is not a plain relative path."""


class TooLarge(Exception):
    """An upload is larger than the configured limit."""


def inside(root: Path, relative: str) -> Path:
    """The real path of `relative` under `root`; OutsideStorage when it is not under it."""
    if not relative or "\x00" in relative or "\\" in relative or "%" in relative:
        raise OutsideStorage(f"{relative!r} is not a plain relative path")
    if relative.startswith("/") or re.match(r"^[A-Za-z]:", relative):
        raise OutsideStorage(f"{relative!r} is absolute: give a path under the storage root")
    parts = relative.split("/")
    if any(part in ("..", ".") for part in parts):
        raise OutsideStorage(f"{relative!r} steps out of its folder")
    return contain(root, root / relative)


def contain(root: Path, path: Path) -> Path:
    """`path` with symlinks resolved, when that is still under `root`; OutsideStorage otherwise."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        # The message names no absolute path: it goes back to whoever asked.
        raise OutsideStorage(f"{path.name or path}: not a file under the storage root")
    return real


def open_inside(root: Path, path: Path) -> IO[bytes]:
    """A plain file under the root opened for reading, following no symlink on the way."""
    real = contain(root, path)
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: a symlink appeared after the check
            raise OutsideStorage(f"{path.name}: a symlink, not followed") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise FileNotFoundError(f"{path.name}: not a file")
    return os.fdopen(descriptor, "rb")


def tail(root: Path, path: Path, size: int) -> dict[str, Any]:
    """The last `size` bytes of a file as text, with where they start and the file's size."""
    with open_inside(root, path) as handle:
        total = os.fstat(handle.fileno()).st_size
        start = max(0, total - size)
        handle.seek(start)
        data = handle.read(size)
    return {"offset": start, "size": total, "text": data.decode("utf-8", "replace")}


def read_range(root: Path, path: Path, offset: int, length: int) -> dict[str, Any]:
    """`length` bytes from `offset` (what a client following a growing log asks for next)."""
    with open_inside(root, path) as handle:
        total = os.fstat(handle.fileno()).st_size
        handle.seek(min(offset, total))
        data = handle.read(length)
    return {"offset": min(offset, total), "size": total, "text": data.decode("utf-8", "replace")}


def stream(root: Path, path: Path) -> tuple[Iterator[bytes], int]:
    """A file's bytes in chunks, and its size, for a download."""
    handle = open_inside(root, path)
    size = os.fstat(handle.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(CHUNK):
                yield block

    return chunks(), size


def save(root: Path, relative: str, source: IO[bytes], limit: int,
         overwrite: bool = False) -> tuple[Path, int]:
    """Write an upload to `relative` under the root (at most `limit` bytes); its path and size.

    It is written to a hidden temporary file first and renamed, so a cut upload leaves nothing
    half-written under its name. FileExistsError when the name is taken and not `overwrite`.
    """
    target = inside(root, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    contain(root, target.parent)  # a symlinked folder made meanwhile
    if target.exists() and not overwrite:
        raise FileExistsError(f"{relative} exists already")
    temporary = target.parent / f".upload-{secrets.token_hex(6)}"
    written = 0
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o644)
        with os.fdopen(descriptor, "wb") as out:
            while block := source.read(CHUNK):
                written += len(block)
                if written > limit:
                    raise TooLarge(f"the upload is larger than the limit of {limit} bytes")
                out.write(block)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()
    return target, written


def blender_frame_paths(task: dict[str, Any]) -> list[Path]:
    """The files a Blender task's frames are written to, last frame first (none: not Blender).

    Worked out from its argv as the blender template writes it (`-b SCENE ... -o OUTPUT [-F
    FORMAT]`), by the same rules the movie layer uses to find them.
    """
    argv = [str(arg) for arg in task.get("command") or []]
    if not argv or "blender" not in Path(argv[0]).name or "-o" not in argv or "-b" not in argv:
        return []
    try:
        scene = argv[argv.index("-b") + 1]
        output = argv[argv.index("-o") + 1]
    except IndexError:
        return []
    file_format = argv[argv.index("-F") + 1] if "-F" in argv[:-1] else None
    extensions = {"PNG": ["png"], "JPEG": ["jpg"]}.get(file_format or "", []) \
        if file_format else ["png", "jpg"]
    start, end = task.get("frame_start"), task.get("frame_end")
    if start is None or end is None:
        return []
    low, high = sorted((int(start), int(end)))
    cwd = Path(task.get("cwd") or "/")
    paths = []
    for frame in range(high, low - 1, -1):
        for extension in extensions:
            pattern = _sequence_pattern(scene, output, extension)
            path = Path(pattern % frame)
            paths.append(path if path.is_absolute() else cwd / path)
    return paths


def last_frame(root: Path, task: dict[str, Any]) -> Path | None:
    """The newest image a task wrote under the storage root: from its result's `outputs`, or
    the frames of a Blender render; None when there is none (yet)."""
    candidates: list[Path] = []
    result = task.get("result")
    if isinstance(result, dict) and isinstance(result.get("outputs"), list):
        candidates += [Path(str(p)) for p in reversed(result["outputs"])]
    candidates += blender_frame_paths(task)
    for path in candidates:
        if path.suffix.lower() not in IMAGE_TYPES:
            continue
        try:
            real = contain(root, path if path.is_absolute() else root / path)
        except OutsideStorage:
            continue
        if real.is_file():
            return real
    return None
