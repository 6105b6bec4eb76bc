"""The registry service: owns workers, hosts, service heartbeats and the farm's accounts; the farm view.

Run it with `nameko run --config deploy/config.yaml services.registry`. Accounts (users with
argon2-hashed passwords, roles, the tokens issued to them and their revocations) live in the
registry's own database (services.registry.accounts); the tokens are signed with the farm's
secret, so every service verifies them itself (shared.identity) and hears of revocations by the
`token_revoked` event and its periodic re-read of `revoked_tokens`.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from nameko import config
from nameko.events import EventDispatcher
from nameko.extensions import DependencyProvider
from nameko.timer import timer

from services.common.access import Access, Authenticated, allow
from services.common.ask import ask
from services.common.entrypoints import ServiceRpc, rpc
from services.registry import accounts, control
from services.registry import store as store_ops
from services.registry.heartbeat_intake import BATCH_EVERY, HeartbeatIntake
from services.registry.queue_probe import QueueProbe
from shared import audit
from shared.bands import DEAD_REPORTS_QUEUE, HEARTBEATS_QUEUE, REPORTS_QUEUE, queue_name
from shared.config import Settings, settings_from_mapping
from shared.credentials import farm_secret
from shared.db import Store, create_db_engine
from shared.errors import EXPECTED_EXCEPTIONS
from shared.heartbeat import Heartbeat
from shared.identity import Role
from shared.validation import validate_rpc_arguments

log = logging.getLogger(__name__)


class RegistryState:
    """What every registry worker shares: settings, the store, and a way to read queue depths."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.secret = farm_secret(settings)  # signs the tokens the registry issues
        self.queues = QueueProbe(settings.amqp_uri)
        self.heartbeats = HeartbeatIntake(settings.amqp_uri, settings.queue_type)

    def queue_depths(self, pools: set[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Messages and consumers of every pool-and-band queue, and the finish reports waiting
        and set aside (corral.reports.dead), read with passive declares."""
        names = [(pool, band.name, queue_name(pool, band.name))
                 for pool in sorted(pools) for band in self.settings.bands]
        found = self.queues.depths([name for _, _, name in names]
                                   + [REPORTS_QUEUE, DEAD_REPORTS_QUEUE])
        depths = [{"pool": pool, "band": band, "queue": name, "messages": found[name][0],
                   "consumers": found[name][1]} for pool, band, name in names]
        reports = {"waiting": found[REPORTS_QUEUE][0], "dead": found[DEAD_REPORTS_QUEUE][0]}
        return depths, reports


class RegistryCore(DependencyProvider):
    def setup(self) -> None:
        settings = settings_from_mapping(config)
        store = Store(create_db_engine(settings.registry_db), store_ops.RegistryTable.metadata,
                      migrations="registry")
        store.migrate()
        self.state = RegistryState(settings, store)

    def stop(self) -> None:
        self.state.queues.close()
        self.state.heartbeats.close()
        self.state.store.dispose()

    def get_dependency(self, worker_ctx: Any) -> RegistryState:
        return self.state


@validate_rpc_arguments
class RegistryService(Authenticated):
    """RPC `registry`: workers join, heartbeat and leave; services report in; the farm at a glance."""

    name = "registry"

    core: RegistryState = RegistryCore()
    dispatch = EventDispatcher()
    access = Access(store_ops.AUDIT)
    # Asked for their audit entries only: the registry's list_audit is the farm's whole log.
    scheduler = ServiceRpc("scheduler")
    negotiator = ServiceRpc("resource_negotiator")
    license = ServiceRpc("license")

    def _emit(self, emitted: list[tuple[str, dict[str, Any]]]) -> None:
        for event_type, payload in emitted:
            self.dispatch(event_type, payload)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def register_worker(self, worker_id: str, host: str, pool: str, bands: list[str],
                        pid: int | None = None, name: str | None = None) -> dict[str, Any]:
        """Join the farm; the reply says what is wanted of the worker, and `heartbeats` names
        the queue to publish heartbeats to (shared.heartbeat): a registry without it wants
        them by `worker_heartbeat`."""
        reply, emitted = store_ops.register_worker(self.core.store, worker_id, host, pool,
                                                   list(bands), pid, name)
        self._emit(emitted)
        return {**reply, "heartbeats": HEARTBEATS_QUEUE}

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def worker_heartbeat(self, worker_id: str, state: str,
                         current_task: int | None = None) -> dict[str, Any]:
        """A heartbeat with a reply (what is wanted of the worker, `known`), for workers that
        do not publish theirs to the heartbeat queue."""
        reply, emitted = store_ops.worker_heartbeat(self.core.store, worker_id, state,
                                                    current_task)
        self._emit(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def leave_worker(self, worker_id: str) -> dict[str, Any]:
        reply, emitted = store_ops.leave_worker(self.core.store, worker_id)
        self._emit(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WRANGLER, audit="{state} {reply[target]}")
    def set_worker_wanted_state(self, state: str, worker_id: str | None = None,
                                host: str | None = None, pool: str | None = None,
                                now: bool = False) -> dict[str, Any]:
        reply, emitted = control.set_wanted_state(self.core.store, state,
                                                  self.access.identity.user, worker_id, host,
                                                  pool, bool(now))
        self._emit(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)  # the services report in with their own tokens
    def service_heartbeat(self, service: str, host: str) -> None:
        store_ops.service_heartbeat(self.core.store, service, host)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER, workers=True)  # the pool counts its idle workers
    def list_workers(self, alive: bool = False, pool: str | None = None) -> list[dict[str, Any]]:
        return store_ops.list_workers(self.core.store, alive, pool)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER)
    def list_services(self) -> list[dict[str, Any]]:
        return store_ops.list_services(self.core.store, self.core.settings.worker_lost_after)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER)
    def farm_overview(self) -> dict[str, Any]:
        by_state, pools, hosts = store_ops.worker_summary(self.core.store)
        queues, reports = self.core.queue_depths(pools)
        return {
            "workers": by_state,
            "hosts": hosts,
            "queues": queues,
            "reports": reports,
            "services": store_ops.list_services(self.core.store,
                                                self.core.settings.worker_lost_after),
        }

    # --- accounts -------------------------------------------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(None)  # anyone: this is how a person without a token gets one
    def authenticate(self, username: str, password: str) -> dict[str, Any]:
        return accounts.authenticate(self.core.store, self.core.secret, username, password,
                                     self.core.settings.login_ttl_seconds)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN, audit="user {username}")
    def create_user(self, username: str, role: str, password: str | None = None) -> dict[str, Any]:
        return accounts.create_user(self.core.store, username, role, password)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)
    def list_users(self) -> list[dict[str, Any]]:
        return accounts.list_users(self.core.store)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN, audit="user {username}")
    def remove_user(self, username: str) -> dict[str, Any]:
        reply, emitted = accounts.remove_user(self.core.store, username)
        self._revoked(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN, audit="token {reply[token_id]} of {username}")
    def create_token(self, username: str, name: str,
                     ttl_seconds: float | None = None) -> dict[str, Any]:
        return accounts.create_token(self.core.store, self.core.secret, username, name,
                                     ttl_seconds)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN, audit="token {token_id}")
    def revoke_token(self, token_id: str) -> dict[str, Any]:
        reply, emitted = accounts.revoke_token(self.core.store, token_id)
        self._revoked(emitted)
        return reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)
    def list_tokens(self, username: str | None = None) -> list[dict[str, Any]]:
        return accounts.list_tokens(self.core.store, username)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)  # the services' own tokens are an administrator's
    def revoked_tokens(self) -> list[str]:
        return accounts.revoked_ids(self.core.store)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WRANGLER)
    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Every service's audit entries as one log, newest first; a service that does not
        answer within the RPC timeout is left out (and logged)."""
        lists = [audit.entries(self.core.store, store_ops.AUDIT, since, actor, limit)]
        for name, service in (("scheduler", self.scheduler), ("resource_negotiator", self.negotiator),
                              ("license", self.license)):
            entries = ask(lambda service=service: service.list_audit(since, actor, limit),
                          self.core.settings.rpc_timeout_seconds,
                          f"no audit entries from the {name} service", logging.WARNING)
            lists.append(entries or [])
        return audit.merge(lists, limit)

    def _revoked_token_ids(self) -> list[str]:
        return accounts.revoked_ids(self.core.store)  # its own: no round trip

    def _revoked(self, emitted: list[tuple[str, dict[str, Any]]]) -> None:
        for _, payload in emitted:
            self.access.revoke(payload["token_id"])  # this instance at once; others by the event
        self._emit(emitted)
    # --- forgetting, when the cleanup service asks ----------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)  # the cleanup service's own calls
    def forget_workers(self, gone_for_seconds: float) -> dict[str, Any]:
        """Delete workers that left or were lost more than `gone_for_seconds` ago."""
        return store_ops.forget_workers(self.core.store, float(gone_for_seconds))

    @timer(interval=BATCH_EVERY)
    def take_heartbeats(self) -> None:
        """Apply the heartbeats workers published since the last batch (heartbeat_intake)."""
        self.core.heartbeats.take(self.access.verify, self._apply_heartbeats)

    def _apply_heartbeats(self, beats: list[Heartbeat]) -> None:
        self._emit(store_ops.apply_heartbeats(self.core.store, beats))

    @timer(interval=1)
    def find_lost_workers(self) -> None:
        unheard = self.core.heartbeats.unheard_seconds()
        if unheard is None:
            return  # the heartbeats waiting since our start are not all applied yet
        self._emit(store_ops.mark_lost_workers(self.core.store,
                                               self.core.settings.worker_lost_after, unheard))

    @timer(interval=2, eager=True)
    def report_in(self) -> None:
        store_ops.service_heartbeat(self.core.store, self.name, socket.gethostname())
