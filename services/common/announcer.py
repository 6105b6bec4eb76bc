"""Events that say what something is now, sent after the call that changed it has replied.

The negotiator announces a host's free amounts after every reservation. Sending that event inside
the RPC would make the worker waiting on the reply also wait for the event's publish and confirm
(about 2 ms on the per-task path). An Announcer takes the names of what changed, and one
background green thread sends one event per name with the state read at sending time: a burst of
changes to one host becomes one event carrying the newest amounts, so nothing is announced out of
order. An event lost to a broker outage is harmless: listeners also re-read the whole picture
every few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import eventlet
from eventlet.queue import LightQueue
from nameko.standalone.events import event_dispatcher

log = logging.getLogger(__name__)


class Announcer:
    """Coalescing sender of `event_type` events from `service_name`, one per changed key."""

    def __init__(self, service_name: str, event_type: str,
                 view: Callable[[str], dict[str, Any] | None],
                 dispatch: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        self.service_name = service_name
        self.event_type = event_type
        self._view = view
        self._queue: LightQueue = LightQueue()
        # nameko's standalone dispatcher (its own pooled, confirmed publisher) unless given one.
        self.dispatch = dispatch
        self._thread: Any = None

    def start(self, spawn: Callable[[Callable[[], None]], Any]) -> None:
        if self.dispatch is None:
            self.dispatch = event_dispatcher()
        self._thread = spawn(self._run)

    def stop(self) -> None:
        """Send what is pending, then end the sending thread."""
        if self._thread is not None:
            self._thread.kill()
            self._thread = None
            self.flush()

    def announce(self, *keys: str) -> None:
        for key in keys:
            self._queue.put(key)

    def flush(self) -> None:
        """Send every pending announcement now, from the calling green thread."""
        self._send_all(set())

    def _run(self) -> None:
        while True:
            self._send_all({self._queue.get()})

    def _send_all(self, due: set[str]) -> None:
        while not self._queue.empty():
            due.add(self._queue.get_nowait())
        for key in sorted(due):
            self._send(key)

    def _send(self, key: str) -> None:
        assert self.dispatch is not None, "start() the announcer first"
        try:
            payload = self._view(key)
            if payload is not None:
                self.dispatch(self.service_name, self.event_type, payload)
        except Exception as exc:
            log.warning("could not announce %s %s: %s", self.event_type, key, exc)
            eventlet.sleep(0.1)
