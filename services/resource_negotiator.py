"""The resource negotiator service: owns each host's capacity and every reservation made against it.

Run it with `nameko run --config deploy/config.yaml services.resource_negotiator`. The class is a
thin adapter over services._negotiator_store, where the check and the booking of a reservation
share one transaction (which is also why a restart needs no rebuild).
"""

from __future__ import annotations

import logging
from typing import Any

from nameko import config
from nameko.extensions import DependencyProvider
from nameko.rpc import ServiceRpc, rpc

from services import _holder_service
from services import _negotiator_store as store_ops
from services._announcer import Announcer
from shared import events
from shared.config import Settings, settings_from_mapping
from shared.contracts import RegistryRpc, SchedulerRpc
from shared.db import Store, create_db_engine
from shared.errors import EXPECTED_EXCEPTIONS

log = logging.getLogger(__name__)


class NegotiatorState:
    """What every negotiator worker shares: settings, the store, and the host_changed sender."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.announcer = Announcer(ResourceNegotiatorService.name, events.HOST_CHANGED,
                                   self._host_event)

    def _host_event(self, host: str) -> dict[str, Any]:
        view = store_ops.host_view(self.store, host)
        return {"host": host, "totals": view["totals"], "free": view["free"]}


class NegotiatorCore(DependencyProvider):
    def setup(self) -> None:
        settings = settings_from_mapping(config)
        store = Store(create_db_engine(settings.negotiator_db),
                      store_ops.NegotiatorTable.metadata, migrations="negotiator")
        store.migrate()
        self.state = NegotiatorState(settings, store)

    def start(self) -> None:
        self.state.announcer.start(self.container.spawn_managed_thread)

    def stop(self) -> None:
        self.state.announcer.stop()
        self.state.store.dispose()

    def get_dependency(self, worker_ctx: Any) -> NegotiatorState:
        return self.state


class ResourceNegotiatorService(_holder_service.HolderService):
    """RPC `resource_negotiator`: hosts report what they have; workers reserve and release it."""

    name = "resource_negotiator"
    holds = "reservations"
    store_ops = store_ops

    core: NegotiatorState = NegotiatorCore()
    registry: RegistryRpc = ServiceRpc("registry")
    scheduler: SchedulerRpc = ServiceRpc("scheduler")

    def _changed(self, *hosts: str) -> None:
        """Tell the scheduler what a host now has free, so it places work where it fits.

        The event goes out after this call has replied (see services._announcer): a worker
        waiting to start its task does not also wait for the announcement.
        """
        self.core.announcer.announce(*hosts)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def report_host(self, host: str, cores: float, memory_mb: int,
                    gpus: list[dict[str, Any]] | None = None,
                    custom: dict[str, float] | None = None) -> dict[str, Any]:
        totals = store_ops.host_totals_from_wire(host, cores, memory_mb, gpus, custom)
        reply = store_ops.report_host(self.core.store, totals)
        self._changed(host)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def reserve(self, reservation_id: str, host: str, worker_id: str, task_id: int, attempt: int,
                minimum: dict[str, Any],
                preferred: dict[str, Any] | None = None) -> dict[str, Any] | None:
        wanted = store_ops.resources_from_wire(minimum, "minimum")
        better = None if preferred is None else store_ops.resources_from_wire(preferred,
                                                                              "preferred")
        reservation = store_ops.reserve(self.core.store, str(reservation_id), host,
                                        str(worker_id), int(task_id), int(attempt), wanted,
                                        better)
        if reservation is not None:
            self._changed(host)
        return reservation

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def release(self, reservation_id: str) -> dict[str, Any] | None:
        released = store_ops.release(self.core.store, str(reservation_id))
        if released is not None:
            self._changed(released["host"])
        return released

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def release_for_worker(self, worker_id: str) -> list[dict[str, Any]]:
        released = store_ops.release_for_worker(self.core.store, str(worker_id))
        self._changed(*(reservation["host"] for reservation in released))
        return released

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def free(self, host: str) -> dict[str, Any]:
        return store_ops.free(self.core.store, host)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def list_hosts(self) -> list[dict[str, Any]]:
        return store_ops.hosts(self.core.store)

    # --- holders that are gone ------------------------------------------------------------------

    def _released(self, released: list[dict[str, Any]], why: str) -> None:
        for reservation in released:
            log.info("released %s on %s: %s", reservation["id"], reservation["host"], why)
        self._changed(*(reservation["host"] for reservation in released))
