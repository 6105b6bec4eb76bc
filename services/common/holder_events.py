"""Event handlers shared by the services that hold things for task attempts (see services.common.holdings).

A service class inherits HolderService and names the store module whose `release_for_worker`,
`release_for_task` and `release_for_cancelled_task` give its records back; it says what was
given back (and announces the change) in `_released`. nameko finds inherited entrypoints, so
each service gets its own queues for these events. Import this module, not the class: `nameko run`
takes every class with entrypoints in a service's module for a service.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, ClassVar

import eventlet

from services.common import report_in
from services.common.entrypoints import event_handler
from shared import events
from shared.contracts import RegistryRpc, SchedulerRpc
from shared.errors import NotFound

log = logging.getLogger(__name__)


class HolderService(report_in.ReportsIn):
    """What a service holding things per task attempt does when holders go away."""

    name: ClassVar[str]
    holds: ClassVar[str]  # what it holds, for log lines: "reservations", "licence leases"
    store_ops: ClassVar[ModuleType]
    core: Any  # its state: .settings and .store
    registry: RegistryRpc
    scheduler: SchedulerRpc

    def _released(self, released: list[dict[str, Any]], why: str) -> None:
        raise NotImplementedError

    @event_handler("registry", events.WORKER_LOST)
    def handle_worker_lost(self, payload: dict[str, Any]) -> None:
        self._released(self.store_ops.release_for_worker(self.core.store, payload["worker_id"]),
                       f"worker {payload['worker_id']} was lost")

    @event_handler("registry", events.WORKER_LEFT)
    def handle_worker_left(self, payload: dict[str, Any]) -> None:
        self._released(self.store_ops.release_for_worker(self.core.store, payload["worker_id"]),
                       f"worker {payload['worker_id']} left")

    @event_handler("scheduler", events.TASK_FINISHED)
    def handle_task_finished(self, payload: dict[str, Any]) -> None:
        self._released(self.store_ops.release_for_task(self.core.store, int(payload["task_id"]),
                                                       int(payload["attempt"])),
                       f"task {payload['task_id']} finished")

    @event_handler("scheduler", events.TASK_FAILED)
    def handle_task_failed(self, payload: dict[str, Any]) -> None:
        self._released(self.store_ops.release_for_task(self.core.store, int(payload["task_id"]),
                                                       int(payload["attempt"])),
                       f"task {payload['task_id']} failed")

    @event_handler("scheduler", events.TASK_CANCELLED)
    def handle_task_cancelled(self, payload: dict[str, Any]) -> None:
        task_id = int(payload["task_id"])
        if payload.get("attempt") is not None:  # the attempt that was stopped
            self._released(self.store_ops.release_for_task(self.core.store, task_id,
                                                           int(payload["attempt"])),
                           f"task {task_id} was cancelled")
            return
        task: dict[str, Any] | None
        try:
            # An event from a scheduler that named no attempt: it says which one is current.
            with eventlet.Timeout(self.core.settings.rpc_timeout_seconds):
                task = self.scheduler.get_task(task_id)
        except NotFound:
            task = None
        except (Exception, eventlet.Timeout) as exc:
            # Giving back what a live attempt holds would let two tasks use it at once; keeping
            # an ended one's only idles it until its worker releases, leaves or is lost.
            log.warning("task %s was cancelled but its current attempt is unknown; its %s are "
                        "kept: %s", task_id, self.holds, exc)
            return
        self._released(self.store_ops.release_for_cancelled_task(self.core.store, task_id, task),
                       f"task {task_id} was cancelled")

