"""The scheduler service's one shared state: config, its database, the Dispatcher and the leader lease.

Several instances of the scheduler may serve one farm: each answers RPC and keeps its views of
workers, hosts and licences current (the events feeding them reach every instance: `view_event`);
only the one holding the leader lease (services.scheduler.leadership) releases and sweeps.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import eventlet
from nameko import config
from nameko.containers import ServiceContainer
from nameko.events import BROADCAST
from nameko.extensions import DependencyProvider

from services.common.entrypoints import EventHandler, event_handler
from services.scheduler import store as store_ops
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.leadership import Leadership, instance_name
from services.scheduler.notify_sender import NotificationSender
from shared.config import settings_from_mapping
from shared.db import Store, create_db_engine

log = logging.getLogger(__name__)

view_event = functools.partial(event_handler, handler_type=BROADCAST, reliable_delivery=False)
"""An event that feeds an instance's in-memory views: every instance hears it (nameko's default
gives each event to one instance of a service). One missed while an instance was down is
caught up by its periodic re-read of the registry, negotiator and licence service."""


def pooled_queues(container: ServiceContainer) -> list[str]:
    """The durable queues the service's view events had while nameko gave each event to one
    instance (before several schedulers could serve a farm): nobody reads them now, and left
    bound they would fill with every event sent."""
    return [f"evt-{handler.source_service}-{handler.event_type}--{container.service_name}."
            f"{handler.method_name}" for handler in container.entrypoints
            if isinstance(handler, EventHandler) and handler.handler_type is BROADCAST]


class SchedulerCore(DependencyProvider):
    """Reads config, opens the scheduler's database and hands every worker the one Dispatcher;
    keeps this instance's part in the leader lease."""

    def setup(self) -> None:
        settings = settings_from_mapping(config)
        store = Store(create_db_engine(settings.scheduler_db), store_ops.SchedulerTable.metadata,
                      migrations="scheduler")
        store.migrate()
        self.dispatcher = Dispatcher(settings, store, self.container.spawn_managed_thread)
        self.leadership = Leadership(store, settings.leader_lease_seconds,
                                     self.dispatcher.take_over,
                                     holder=instance_name(settings.instance_name))
        self.dispatcher.leadership = self.leadership
        notify = settings.notifications
        self.sender = NotificationSender(notify, notify.monitor_url or f"http://{settings.web.bind}",
                                         store, self.dispatcher.troubles)
        self._running = False

    def start(self) -> None:
        # The first try before any entrypoint runs: a farm's only scheduler leads at once.
        self._running = True
        try:
            self.dispatcher.side_publisher.delete_queues(pooled_queues(self.container))
        except Exception as exc:  # the broker is away: the next start tries again
            log.warning("could not delete the event queues of earlier schedulers: %s", exc)
        self._tick()
        self.container.spawn_managed_thread(self._keep_lease)
        # Its own green thread: a slow receiver never holds up RPC, reports or release passes.
        self.sender.start(self.container.spawn_managed_thread)

    def _tick(self) -> None:
        """Renew or try to take the lease; a failure is noted for `health` (and the next try
        comes at the next renewal, never after a longer pause: a standby must be ready)."""
        troubles = self.dispatcher.troubles
        try:
            self.leadership.tick()
        except Exception as exc:
            troubles.failed("leader lease", exc)
        else:
            troubles.succeeded("leader lease")

    def _keep_lease(self) -> None:
        while self._running:
            eventlet.sleep(self.leadership.renew_every)
            self._tick()

    def stop(self) -> None:
        self._running = False
        try:
            self.leadership.resign()
        except Exception as exc:  # the database is away: the lease lapses on its own
            log.warning("could not give the leader lease up: %s", exc)
        self.sender.stop()
        self.dispatcher.publisher.close()
        self.dispatcher.side_publisher.close()
        self.dispatcher.store.dispose()

    def get_dependency(self, worker_ctx: Any) -> Dispatcher:
        return self.dispatcher
