"""One way for a nameko service to ask another within the RPC timeout and carry on without an answer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import eventlet

log = logging.getLogger(__name__)


def ask(call: Callable[[], Any], timeout: float, failing: str, level: int = logging.DEBUG) -> Any:
    """Another service's answer within `timeout` seconds, or None (logged) when it has none."""
    try:
        with eventlet.Timeout(timeout):
            return call()
    except (Exception, eventlet.Timeout) as exc:
        log.log(level, "%s: %s", failing, exc)
        return None
