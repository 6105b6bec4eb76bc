"""Workers' finish reports off the RPC path: applied, published again after a failure, or set aside."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import eventlet

from services.scheduler import store as store_ops
from services.scheduler.dispatcher import Dispatcher
from shared.bands import DEAD_REPORTS_QUEUE, REPORTS_QUEUE
from shared.errors import NotFound, StaleLease
from shared.redact import redacted

# The scheduler service's own log: these lines were written there before they moved here.
log = logging.getLogger("services.scheduler.service")

MAX_REPORT_TRIES = 8
"""A finish report that fails this many times (not counting refusals) is set aside."""


def apply_finish_report(core: Dispatcher, report: dict[str, Any],
                        emit: Callable[[list[tuple[str, dict[str, Any]]]], None]) -> None:
    """Apply one finish report (SchedulerService.handle_finish_report says what becomes of it)."""
    try:
        fields = store_ops.finish_report_fields(report)
    except ValueError as exc:
        bury_report(core, report, f"malformed: {exc}")
        return
    try:
        outcome = store_ops.finish_task(core.store, **fields, refusals=core.refusals)
    except (StaleLease, NotFound) as exc:
        log.warning("finish report refused: %s", exc)
        return
    except Exception as exc:
        retry_report(core, report, exc)
        return
    core.request_release()
    emit(outcome.events)


def retry_report(core: Dispatcher, report: dict[str, Any], error: Exception) -> None:
    tries = int(report.get("tries") or 0) + 1
    if tries >= MAX_REPORT_TRIES:
        bury_report(core, report, f"failed {tries} times, last: {error!r}")
        return
    log.warning("finish report of task %s failed (%r); trying again (%d of %d)",
                report.get("task_id"), error, tries, MAX_REPORT_TRIES)
    eventlet.sleep(min(0.1 * 2 ** tries, 10.0))
    # If this publish fails too, the error reaches nameko, which puts the original back.
    core.send(REPORTS_QUEUE, {**report, "tries": tries})


def bury_report(core: Dispatcher, report: dict[str, Any], why: str) -> None:
    log.error("finish report %r cannot be applied (%s): kept in %s", redacted(report), why,
              DEAD_REPORTS_QUEUE)
    core.send(DEAD_REPORTS_QUEUE, {"report": report, "error": why, "at": time.time()})
