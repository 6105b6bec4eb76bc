"""Per-host records of the attempts running on a host, and ending what is left of lost ones.

Each running attempt has a record under `<storage root>/hosts/<host>/attempts/`: its worker's
pid and start time, its supervisor's, its cgroup and a marker that every process of the attempt
carries in its environment (`CORRAL_RUN`). A worker removes the record when the attempt's tree
is gone. A record whose worker is no longer running is a lost attempt: before anything else
starts on the host, a worker or pool kills what is left of it (its cgroup, its supervisor, and
every process carrying its marker) and removes the record, so a task never runs twice at once on
one host even when a supervisor was itself killed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import psutil

from shared.storage import HOSTS

log = logging.getLogger(__name__)

MARKER_VARIABLE = "CORRAL_RUN"
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def attempts_dir(storage_root: Path, host: str) -> Path:
    return storage_root / HOSTS / host / "attempts"


def cgroup_base() -> Path | None:
    """Where attempts' cgroups go: a writable cgroup v2 hierarchy with cgroup.kill, or None."""
    for root in CGROUP_ROOTS:
        if not (root / "cgroup.kill").exists() and not (root / "cgroup.procs").exists():
            continue
        if not (root / "cgroup.controllers").exists():
            continue  # a cgroup v1 controller, not the unified hierarchy
        base = root / "corral"
        try:
            base.mkdir(exist_ok=True)
        except OSError:
            continue
        probe = base / f"probe-{os.getpid()}"
        try:
            probe.mkdir(exist_ok=True)
            usable = (probe / "cgroup.kill").exists()
            probe.rmdir()
        except OSError:
            continue
        if usable:
            return base
    return None


def started(pid: int) -> float | None:
    """When process `pid` started (what tells it from a later process given its pid), or None."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def record(directory: Path, marker: str, supervisor_pid: int, cgroup: str | None) -> Path:
    """Note that this worker runs the attempt `marker` under the supervisor `supervisor_pid`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{marker}.json"
    body = {"marker": marker, "worker_pid": os.getpid(), "worker_started": started(os.getpid()),
            "supervisor_pid": supervisor_pid, "supervisor_started": started(supervisor_pid),
            "cgroup": cgroup}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(body))
    temporary.replace(path)
    return path


def same_process(pid: int, started_at: float | None) -> bool:
    """True when `pid` still names the process that was started at `started_at` (no pid reuse)."""
    now = started(pid)
    return now is not None and started_at is not None and abs(now - started_at) < 0.5


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def end_attempt(body: dict[str, Any]) -> int:
    """Kill everything of one attempt still running on this machine; how many were found."""
    killed = 0
    cgroup = body.get("cgroup")
    if cgroup and os.path.isdir(cgroup):
        try:
            with open(os.path.join(cgroup, "cgroup.procs")) as procs:
                killed += len(procs.read().split())
            with open(os.path.join(cgroup, "cgroup.kill"), "w") as kill:
                kill.write("1")
        except OSError:
            pass
    if same_process(int(body.get("supervisor_pid") or 0), body.get("supervisor_started")):
        _kill(int(body["supervisor_pid"]))
        killed += 1
    wanted = f"{MARKER_VARIABLE}={body['marker']}".encode()
    for process in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{process.pid}/environ", "rb") as environ:
                if wanted in environ.read().split(b"\0"):
                    _kill(process.pid)
                    killed += 1
        except OSError:
            continue
    if cgroup:
        try:
            os.rmdir(cgroup)
        except OSError:
            pass  # still emptying; the next pass removes it
    return killed


def end_leftovers(directory: Path, keep: frozenset[str] = frozenset()) -> list[str]:
    """End every recorded attempt whose worker is gone (and not in `keep`); their markers."""
    ended: list[str] = []
    try:
        paths = list(directory.glob("*.json"))
    except OSError:
        return ended
    for path in paths:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if body.get("marker") in keep:
            continue
        if same_process(int(body.get("worker_pid") or 0), body.get("worker_started")) \
                and body.get("worker_pid") != os.getpid():
            continue  # its worker still runs it
        found = end_attempt(body)
        if found:
            log.warning("ended %d leftover processes of lost attempt %s", found, body["marker"])
        path.unlink(missing_ok=True)
        ended.append(str(body["marker"]))
    return ended
