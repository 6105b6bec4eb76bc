"""Keeps a service's background work alive through database and broker errors, and says so.

A background job (a release pass, a sweep) that fails is logged, waits a pause that doubles with
each failure in a row (up to a limit), and runs again; it never ends its process. What is
failing is kept for the service's health answer until the job succeeds again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Troubles:
    """The background jobs of one service: which are failing, since when, and why."""

    def __init__(self, first_pause: float = 0.5, longest_pause: float = 30.0) -> None:
        self.first_pause = first_pause
        self.longest_pause = longest_pause
        self._lock = threading.Lock()
        self._failing: dict[str, dict[str, Any]] = {}

    def may_run(self, job: str) -> bool:
        """False while `job` is pausing after a failure."""
        with self._lock:
            trouble = self._failing.get(job)
            return trouble is None or time.monotonic() >= trouble["retry_at"]

    def failed(self, job: str, error: BaseException) -> None:
        with self._lock:
            trouble = self._failing.setdefault(job, {"since": time.time(), "failures": 0})
            trouble["failures"] += 1
            pause = min(self.first_pause * 2 ** (trouble["failures"] - 1), self.longest_pause)
            trouble["retry_at"] = time.monotonic() + pause
            trouble["error"] = describe(error)
            failures = trouble["failures"]
        # The first failure with its traceback; then one line each, so a long outage stays legible.
        log.log(logging.ERROR if failures == 1 else logging.WARNING,
                "%s failed (%d in a row, next try in %.1fs): %s", job, failures, pause,
                describe(error), exc_info=error if failures == 1 else None)

    def succeeded(self, job: str) -> None:
        with self._lock:
            trouble = self._failing.pop(job, None)
        if trouble is not None:
            log.warning("%s works again after %d failures", job, trouble["failures"])

    def run(self, job: str, work: Callable[[], T]) -> T | None:
        """Run `work` unless `job` is pausing; on an error, note it and return None."""
        if not self.may_run(job):
            return None
        try:
            result = work()
        except Exception as exc:
            self.failed(job, exc)
            return None
        self.succeeded(job)
        return result

    def health(self) -> dict[str, Any]:
        """{"ok": bool, "troubles": {job: {since, failures, error}}} for a health answer."""
        with self._lock:
            troubles = {job: {key: value for key, value in trouble.items() if key != "retry_at"}
                        for job, trouble in self._failing.items()}
        return {"ok": not troubles, "troubles": troubles}


def describe(error: BaseException) -> str:
    """An error's class and first line, without SQL statements or their parameters."""
    original = getattr(error, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
    shown = original if isinstance(original, BaseException) else error
    first = str(shown).strip().splitlines()[0] if str(shown).strip() else ""
    return f"{type(shown).__name__}: {first}"[:300]
