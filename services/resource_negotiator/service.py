"""The resource negotiator service: owns each host's capacity and every reservation made against it.

Run it with `nameko run --config deploy/config.yaml services.resource_negotiator`. The class is a
thin adapter over services.resource_negotiator.store, where the check and the booking of a reservation
share one transaction (which is also why a restart needs no rebuild).
"""

from __future__ import annotations

import logging
from typing import Any

from nameko import config
from nameko.extensions import DependencyProvider

from services.common import holder_events
from services.common.access import Access, Authenticated, allow
from services.common.announcer import Announcer
from services.common.entrypoints import ServiceRpc, rpc
from services.resource_negotiator import store as store_ops
from shared import audit, events
from shared.config import Settings, settings_from_mapping
from shared.contracts import RegistryRpc, SchedulerRpc
from shared.db import Store, create_db_engine
from shared.errors import EXPECTED_EXCEPTIONS
from shared.identity import Role
from shared.validation import validate_rpc_arguments

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


@validate_rpc_arguments
class ResourceNegotiatorService(holder_events.HolderService, Authenticated):
    """RPC `resource_negotiator`: hosts report what they have; workers reserve and release it."""

    name = "resource_negotiator"
    holds = "reservations"
    store_ops = store_ops

    core: NegotiatorState = NegotiatorCore()
    registry: RegistryRpc = ServiceRpc("registry")
    scheduler: SchedulerRpc = ServiceRpc("scheduler")
    access = Access(store_ops.AUDIT)

    def _changed(self, *hosts: str) -> None:
        """Tell the scheduler what a host now has free, so it places work where it fits.

        The event goes out after this call has replied (see services.common.announcer): a worker
        waiting to start its task does not also wait for the announcement.
        """
        self.core.announcer.announce(*hosts)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def report_host(self, host: str, cores: float, memory_mb: int,
                    gpus: list[dict[str, Any]] | None = None,
                    custom: dict[str, float] | None = None) -> dict[str, Any]:
        totals = store_ops.host_totals_from_wire(host, cores, memory_mb, gpus, custom)
        reply = store_ops.report_host(self.core.store, totals)
        self._changed(host)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
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
    @allow(Role.WORKER)
    def release(self, reservation_id: str) -> dict[str, Any] | None:
        released = store_ops.release(self.core.store, str(reservation_id))
        if released is not None:
            self._changed(released["host"])
        return released

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def release_for_worker(self, worker_id: str) -> list[dict[str, Any]]:
        released = store_ops.release_for_worker(self.core.store, str(worker_id))
        self._changed(*(reservation["host"] for reservation in released))
        return released

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER, workers=True)  # the pool asks before it starts a worker
    def free(self, host: str) -> dict[str, Any]:
        return store_ops.free(self.core.store, host)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER)
    def list_hosts(self) -> list[dict[str, Any]]:
        return store_ops.hosts(self.core.store)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WRANGLER)
    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """This service's own audit entries (the registry's list_audit gathers every service's)."""
        return audit.entries(self.core.store, store_ops.AUDIT, since, actor, limit)
    # --- forgetting, when the cleanup service asks ----------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)  # the cleanup service's own calls
    def forget_hosts(self, silent_for_seconds: float,
                     live_hosts: list[str] | None = None) -> list[str]:
        """Delete hosts silent for more than `silent_for_seconds`, holding nothing, with no live
        worker (`live_hosts`, as the registry says)."""
        return store_ops.forget_hosts(self.core.store, float(silent_for_seconds),
                                      [str(host) for host in live_hosts or ()])

    # --- holders that are gone ------------------------------------------------------------------

    def _released(self, released: list[dict[str, Any]], why: str) -> None:
        for reservation in released:
            log.info("released %s on %s: %s", reservation["id"], reservation["host"], why)
        self._changed(*(reservation["host"] for reservation in released))
