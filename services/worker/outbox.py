"""Delivering the ends of payloads whose worker could not report them: killed, frozen or hung.

A payload that ends on its own has done its work. Its supervisor writes that end beside the
attempt's record (`<marker>.outcome` under the host's attempts folder, see supervisor.py)
before it tells the worker, and the worker removes the file once its own finish report is with
the broker. A file still there means a report that may never come: its worker was killed
before it could send it, is stopped (SIGSTOP, a frozen VM), or has hung. Every worker of the
host looks for such files twice a second, and at start-up before it takes any work, and sends
the finish report itself as a `finish_task` call, so that it knows the scheduler has it, well
inside the lease the attempt was running under (a report is idempotent: one its own worker also
sends later is answered as a repeat; shared/leases.py has the margins). So a worker's death or
freeze between the end of its payload and its report does not lose the payload's work, and the
task is not run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.worker import leftovers
from services.worker.process import OUTCOME_SUFFIX, end_reason, finish_report, read_result, read_tail

log = logging.getLogger(__name__)

LOOK_EVERY = 0.5
"""Seconds between looks for undelivered outcomes."""
HUNG_AFTER = 2.0
"""An outcome its own running worker has not sent for this long is sent by another worker."""


def _stopped(pid: int) -> bool:
    """Whether `pid` is stopped (SIGSTOP, a debugger): it cannot send anything until woken."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def orphaned(outcome: dict[str, Any], age: float, me: int) -> bool:
    """Whether an outcome is for someone other than its own worker to deliver now."""
    pid = int(outcome.get("worker_pid") or 0)
    if pid == me:
        return False  # ours: the worker's own path reports it
    if not leftovers.same_process(pid, outcome.get("worker_started")):
        return True  # its worker is gone
    return _stopped(pid) or age > HUNG_AFTER


def report_of(outcome: dict[str, Any]) -> dict[str, Any]:
    """The finish report an outcome stands for, read as the worker would have read it."""
    result, _ = read_result(Path(outcome["result_path"]))
    exit_code = outcome.get("exit_code")
    return finish_report(
        int(outcome["task_id"]), str(outcome["lease_token"]), exit_code,
        end_reason(exit_code, outcome.get("log_error")), result,
        read_tail(Path(outcome["log_path"]), int(outcome.get("log_tail_bytes") or 0)),
        outcome["log_path"], outcome.get("process_started_at"), outcome.get("process_ended_at"),
        None)


def pending(directory: Path, me: int, now: float | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The outcomes in `directory` that another worker should deliver now."""
    now = time.time() if now is None else now
    found: list[tuple[Path, dict[str, Any]]] = []
    try:
        paths = sorted(directory.glob(f"*{OUTCOME_SUFFIX}"))
    except OSError:
        return found
    for path in paths:
        try:
            outcome = json.loads(path.read_text())
            age = now - path.stat().st_mtime
        except (OSError, ValueError):
            continue  # removed meanwhile, or not ours to read
        if isinstance(outcome, dict) and orphaned(outcome, age, me):
            found.append((path, outcome))
    return found


async def deliver(directory: Path, me: int,
                  send: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
    """Send the finish report of every orphaned outcome, then remove it; how many were sent.

    `send` returns once the scheduler has answered (taken, a repeat, or refused as stale) and
    raises when it could not be asked: the outcome then stays for the next look.
    """
    sent = 0
    for path, outcome in pending(directory, me):
        try:
            report = report_of(outcome)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("outcome %s cannot be read (%s): set aside", path.name, exc)
            path.rename(path.with_suffix(".unreadable"))
            continue
        log.warning("task %s: its worker (pid %s) did not report the payload's end; reporting it",
                    report["task_id"], outcome.get("worker_pid"))
        await send(report)
        path.unlink(missing_ok=True)
        sent += 1
    return sent
