"""The registry service: owns workers, hosts and service heartbeats; the farm view the monitor reads.

Run it with `nameko run --config deploy/config.yaml services.registry`.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from typing import Any

from kombu import Connection, Queue
from nameko import config
from nameko.events import EventDispatcher
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from nameko.timer import timer

from services import _registry_store as store_ops
from shared.bands import DEAD_REPORTS_QUEUE, REPORTS_QUEUE, queue_name
from shared.config import Settings, settings_from_mapping
from shared.db import Store, create_db_engine
from shared.errors import EXPECTED_EXCEPTIONS

log = logging.getLogger(__name__)


class RegistryState:
    """What every registry worker shares: settings, the store, and a way to read queue depths."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def queue_depths(self, pools: set[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Messages and consumers of every pool-and-band queue, and the finish reports waiting
        and set aside (corral.reports.dead), read with passive declares."""
        depths = []
        with Connection(self.settings.amqp_uri, connect_timeout=5) as connection:

            def depth(name: str) -> tuple[int, int]:
                try:
                    channel = connection.channel()
                    _, messages, consumers = Queue(name, channel=channel).queue_declare(
                        passive=True)
                    channel.close()
                    return int(messages), int(consumers)
                except Exception:  # the queue does not exist yet: nothing ever went there
                    return 0, 0

            for pool in sorted(pools):
                for band in self.settings.bands:
                    name = queue_name(pool, band.name)
                    messages, consumers = depth(name)
                    depths.append({"pool": pool, "band": band.name, "queue": name,
                                   "messages": messages, "consumers": consumers})
            reports = {"waiting": depth(REPORTS_QUEUE)[0], "dead": depth(DEAD_REPORTS_QUEUE)[0]}
        return depths, reports


class RegistryCore(DependencyProvider):
    def setup(self) -> None:
        settings = settings_from_mapping(config)
        store = Store(create_db_engine(settings.registry_db), store_ops.RegistryTable.metadata,
                      migrations="registry")
        store.migrate()
        self.state = RegistryState(settings, store)

    def stop(self) -> None:
        self.state.store.dispose()

    def get_dependency(self, worker_ctx: Any) -> RegistryState:
        return self.state


class RegistryService:
    """RPC `registry`: workers join, heartbeat and leave; services report in; the farm at a glance."""

    name = "registry"

    core: RegistryState = RegistryCore()
    dispatch = EventDispatcher()

    def _emit(self, emitted: list[tuple[str, dict[str, Any]]]) -> None:
        for event_type, payload in emitted:
            self.dispatch(event_type, payload)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def register_worker(self, worker_id: str, host: str, pool: str, bands: list[str],
                        pid: int | None = None) -> dict[str, Any]:
        reply, emitted = store_ops.register_worker(self.core.store, worker_id, host, pool,
                                                   list(bands), pid)
        self._emit(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def worker_heartbeat(self, worker_id: str, state: str,
                         current_task: int | None = None) -> dict[str, Any]:
        reply, emitted = store_ops.worker_heartbeat(self.core.store, worker_id, state,
                                                    current_task)
        self._emit(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def leave_worker(self, worker_id: str) -> dict[str, Any]:
        reply, emitted = store_ops.leave_worker(self.core.store, worker_id)
        self._emit(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def service_heartbeat(self, service: str, host: str) -> None:
        store_ops.service_heartbeat(self.core.store, service, host)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def list_workers(self, alive: bool = False, pool: str | None = None) -> list[dict[str, Any]]:
        return store_ops.list_workers(self.core.store, alive, pool)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def list_services(self) -> list[dict[str, Any]]:
        return store_ops.list_services(self.core.store, self.core.settings.worker_lost_after)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def farm_overview(self) -> dict[str, Any]:
        workers = store_ops.list_workers(self.core.store)
        by_state = Counter(w["state"] for w in workers)
        pools = {w["pool"] for w in workers}
        queues, reports = self.core.queue_depths(pools)
        return {
            "workers": dict(by_state),
            "hosts": sorted({w["host"] for w in workers if w["state"] not in ("left", "lost")}),
            "queues": queues,
            "reports": reports,
            "services": store_ops.list_services(self.core.store,
                                                self.core.settings.worker_lost_after),
        }

    @timer(interval=1)
    def find_lost_workers(self) -> None:
        self._emit(store_ops.mark_lost_workers(self.core.store,
                                               self.core.settings.worker_lost_after))

    @timer(interval=2, eager=True)
    def report_in(self) -> None:
        store_ops.service_heartbeat(self.core.store, self.name, socket.gethostname())
