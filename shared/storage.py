"""The farm's storage root: where Corral puts each job's logs, results and scratch, how much room
is left, and removal that can never reach outside it.

Layout, relative to the root: `logs/<job>/<task>.<attempt>.log`,
`results/<job>/<task>.<attempt>.json` and `scratch/<job>/<task>.<attempt>/`. Nothing else under
the root is Corral's, and nothing else is ever removed.

Removal walks from the root one directory file descriptor at a time, each opened with
O_NOFOLLOW | O_DIRECTORY, and unlinks or rmdirs names relative to those descriptors: a symlink
(a payload's, say, pointing outside) is removed as a link and never followed, and a directory
swapped for a symlink between the check and the delete makes the open fail instead of leading
the walk elsewhere. A file that cannot be removed is reported, not raised, so a pass carries on
and tries again next time.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shared.errors import OutsideStorage
from shared.retention import human_size

LOGS, RESULTS, SCRATCH = "logs", "results", "scratch"
KINDS = (LOGS, RESULTS, SCRATCH)
"""The folders under the storage root that hold Corral's files, one subfolder per job."""
UPLOADS = "uploads"
"""Files uploaded through the monitor's API for job specs to name (not per job)."""
HOSTS = "hosts"
"""Each host's own state: records of its running attempts, its workers' names (not per job)."""

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SWAP_RETRIES = 3  # a name that keeps changing kind under us is left for the next pass


def job_path(kind: str, job_id: int) -> str:
    """The folder of one job's files of `kind`, relative to the storage root."""
    if kind not in KINDS:
        raise ValueError(f"no storage kind {kind!r} (expected one of {', '.join(KINDS)})")
    return f"{kind}/{int(job_id)}"


def log_path(job_id: int, task_id: int, attempt: int) -> str:
    return f"{LOGS}/{int(job_id)}/{int(task_id)}.{int(attempt)}.log"


def result_path(job_id: int, task_id: int, attempt: int) -> str:
    return f"{RESULTS}/{int(job_id)}/{int(task_id)}.{int(attempt)}.json"


def scratch_path(job_id: int, task_id: int, attempt: int) -> str:
    return f"{SCRATCH}/{int(job_id)}/{int(task_id)}.{int(attempt)}"


def task_log_path(storage_root: Path, job_id: int, task_id: int, attempt: int) -> Path:
    """The log file of one attempt of a task (its stdout and stderr)."""
    return storage_root / log_path(job_id, task_id, attempt)


def task_result_path(storage_root: Path, job_id: int, task_id: int, attempt: int) -> Path:
    """The JSON file an attempt may write its result to ($CORRAL_RESULT)."""
    return storage_root / result_path(job_id, task_id, attempt)


def checked_parts(relative: str) -> tuple[str, ...]:
    """The components of a path relative to the root; OutsideStorage for anything that is not."""
    path = PurePosixPath(relative)
    if path.is_absolute():
        raise OutsideStorage(f"{relative}: an absolute path, not one under the storage root")
    parts = tuple(part for part in str(relative).split("/"))
    if not parts or any(part in ("", ".", "..") for part in parts):
        raise OutsideStorage(f"{relative}: not a plain path under the storage root")
    return parts


def relative_to_root(root: Path, path: str | os.PathLike[str]) -> str:
    """`path` (absolute, or relative to the root) as a checked path under the resolved root."""
    base = Path(os.path.realpath(root))
    candidate = Path(path)
    if candidate.is_absolute():
        # Lexical, not resolved: a symlink inside the root must not move the answer outside.
        normal = Path(os.path.normpath(candidate))
        for prefix in {base, Path(os.path.normpath(root))}:
            if normal == prefix or prefix in normal.parents:
                relative = normal.relative_to(prefix).as_posix()
                checked_parts(relative)
                return relative
        raise OutsideStorage(f"{path}: outside the storage root {base}")
    checked_parts(str(path))
    return str(PurePosixPath(path))


@dataclass
class Removal:
    """What one removal did: what went, the bytes freed, and what stays (and why)."""

    files: int = 0
    directories: int = 0
    links: int = 0
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)
    """Things that could not be removed now (not writable, busy): tried again next pass."""
    left_alone: list[str] = field(default_factory=list)
    """Things that are not where Corral put them: never removed, only reported."""

    def add(self, other: Removal) -> None:
        self.files += other.files
        self.directories += other.directories
        self.links += other.links
        self.bytes_freed += other.bytes_freed
        self.errors.extend(other.errors)
        self.left_alone.extend(other.left_alone)


def remove(root: Path, relative: str) -> Removal:
    """Remove `relative` (a file, a link or a whole folder) under the storage root, safely."""
    parts = checked_parts(relative)
    removal = Removal()
    try:
        root_fd = os.open(os.path.realpath(root), _DIRECTORY_FLAGS)
    except FileNotFoundError:
        return removal  # no storage root yet: nothing of Corral's to remove
    descriptors = [root_fd]
    try:
        parent = root_fd
        for position, name in enumerate(parts[:-1]):
            try:
                parent = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                return removal  # gone already
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[:position + 1])
                    removal.left_alone.append(
                        f"{where}: a symlink or file where Corral keeps a folder; left alone")
                    return removal
                removal.errors.append(f"{relative}: {exc.strerror or exc}")
                return removal
            descriptors.append(parent)
        _remove_entry(parent, parts[-1], relative, removal)
    finally:
        for descriptor in reversed(descriptors):
            os.close(descriptor)
    return removal


def _remove_entry(dir_fd: int, name: str, shown: str, removal: Removal, tries: int = 0) -> None:
    """Remove `name` in the directory open as `dir_fd`: a folder with all it holds, else the
    entry itself (a symlink as a link)."""
    if tries > _SWAP_RETRIES:
        removal.errors.append(f"{shown}: keeps changing while being removed; tried again later")
        return
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except IsADirectoryError:  # swapped for a folder since the stat
            _remove_entry(dir_fd, name, shown, removal, tries + 1)
            return
        except OSError as exc:
            removal.errors.append(f"{shown}: {exc.strerror or exc}")
            return
        if stat.S_ISLNK(info.st_mode):
            removal.links += 1
        else:
            removal.files += 1
            if stat.S_ISREG(info.st_mode) and info.st_nlink <= 1:
                removal.bytes_freed += info.st_size
        return
    try:
        folder = os.open(name, _DIRECTORY_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or file: remove that
            _remove_entry(dir_fd, name, shown, removal, tries + 1)
            return
        removal.errors.append(f"{shown}: {exc.strerror or exc}")
        return
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries]
        for child in names:
            _remove_entry(folder, child, f"{shown}/{child}", removal)
    finally:
        os.close(folder)
    try:
        os.rmdir(name, dir_fd=dir_fd)
        removal.directories += 1
    except FileNotFoundError:
        return
    except NotADirectoryError:  # swapped for a link after we emptied the folder
        _remove_entry(dir_fd, name, shown, removal, tries + 1)
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY or not any(e.startswith(shown + "/")
                                                    for e in removal.errors):
            removal.errors.append(f"{shown}: {exc.strerror or exc}")


def size_of(root: Path, relative: str) -> int:
    """Bytes of the regular files at or under `relative`, links not followed (0 when missing)."""
    try:
        start = Path(os.path.realpath(root)) / PurePosixPath(*checked_parts(relative))
        info = start.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size if stat.S_ISREG(info.st_mode) else 0
    total = 0
    for folder, _dirs, files in os.walk(start, followlinks=False):
        for name in files:
            try:
                entry = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(entry.st_mode):
                total += entry.st_size
    return total


def job_folders(root: Path) -> Iterator[tuple[str, int]]:
    """Every (kind, job id) folder present under the root (links and strays are not listed)."""
    base = Path(os.path.realpath(root))
    for kind in KINDS:
        try:
            entries = list(os.scandir(base / kind))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                yield kind, int(entry.name)


def strays(root: Path) -> list[str]:
    """What sits under the root that Corral did not put there (left alone, reported)."""
    base = Path(os.path.realpath(root))
    found: list[str] = []
    try:
        top = list(os.scandir(base))
    except FileNotFoundError:
        return found
    for entry in top:
        if entry.name in (UPLOADS, HOSTS) and entry.is_dir(follow_symlinks=False):
            continue  # uploads and the hosts' own state: Corral's, though not kept per job
        if entry.name not in KINDS or not entry.is_dir(follow_symlinks=False):
            found.append(entry.name)
            continue
        for inner in os.scandir(entry.path):
            if not (inner.name.isdigit() and inner.is_dir(follow_symlinks=False)):
                found.append(f"{entry.name}/{inner.name}")
    return sorted(found)


def free_bytes(root: Path) -> int:
    """Free space on the storage root's file system (of its nearest existing parent)."""
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def shortage(root: Path, threshold_bytes: int) -> tuple[int, str | None]:
    """The root's free bytes, and why nothing new should start (None: there is room)."""
    free = free_bytes(root)
    if threshold_bytes <= 0 or free >= threshold_bytes:
        return free, None
    return free, (f"storage root has {human_size(free)} free, below "
                  f"{human_size(threshold_bytes)}")
