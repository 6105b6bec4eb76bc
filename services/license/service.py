"""The license service: owns the studio's licence pools and every lease held against them.

Run it with `nameko run --config deploy/config.yaml services.license`. The class is a thin adapter
over services.license.store, where the check and the booking of a lease share one transaction
(which is also why a restart needs no rebuild). Pools declared in the config are created when the
service starts; those with a FlexLM or RLM status command follow their licence server.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nameko import config
from nameko.extensions import DependencyProvider
from nameko.timer import timer

from services.common import holder_events
from services.common.access import Access, Authenticated, allow
from services.common.announcer import Announcer
from services.common.entrypoints import ServiceRpc, rpc
from services.license import store as store_ops
from shared import audit, events
from shared.config import Settings, settings_from_mapping
from shared.contracts import RegistryRpc, SchedulerRpc
from shared.db import Store, create_db_engine
from shared.errors import EXPECTED_EXCEPTIONS, NotFound
from shared.identity import Role
from shared.licences import LicenceCount, parse_licence_needs, parse_lmstat, parse_rlmstat
from shared.validation import validate_rpc_arguments

log = logging.getLogger(__name__)

PARSERS = {"flexlm": parse_lmstat, "rlm": parse_rlmstat}


@dataclass(frozen=True)
class StatusCommand:
    """One licence server's status command and the pools (name, feature) that read its output."""

    source: str  # "flexlm" or "rlm"
    argv: tuple[str, ...]
    timeout: float
    interval: float
    pools: tuple[tuple[str, str], ...]


def status_commands(settings: Settings) -> list[StatusCommand]:
    """The configured pools that follow a licence server, one command per server run."""
    grouped: dict[tuple[str, tuple[str, ...], float, float], list[tuple[str, str]]] = {}
    for name, pool in sorted(settings.licences.items()):
        if pool.command is not None:
            # Pools read from the same command share one run of it.
            key = (pool.source, pool.command, pool.timeout, pool.interval)
            grouped.setdefault(key, []).append((name, pool.feature or name))
    return [StatusCommand(source, argv, timeout, interval, tuple(pools))
            for (source, argv, timeout, interval), pools in grouped.items()]


def read_status(command: StatusCommand) -> dict[str, LicenceCount]:
    """Run a status command (no shell) and parse its output; RuntimeError says why it failed."""
    try:
        done = subprocess.run(list(command.argv), capture_output=True, timeout=command.timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except OSError as exc:
        raise RuntimeError(f"could not be run: {exc}") from None
    except Exception as exc:
        # Its time-out: under eventlet the green Popen raises the TimeoutExpired of another copy
        # of the subprocess module, so `except subprocess.TimeoutExpired` would not catch it.
        raise RuntimeError(f"failed: {exc}") from None
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        tail = (done.stderr.decode(errors="replace") or output).strip()[-300:]
        raise RuntimeError(f"exited with {done.returncode}: {tail}")
    return PARSERS[command.source](output)


class LicenceState:
    """What every license worker shares: settings, the store and when each server is next read."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.commands = status_commands(settings)
        self.next_read = [0.0] * len(self.commands)  # time.monotonic() at which each is due
        self.announcer = Announcer(LicenseService.name, events.LICENCE_CHANGED, self._pool_event)

    def _pool_event(self, name: str) -> dict[str, Any]:
        try:
            view = store_ops.pool_view(self.store, name)
        except NotFound:
            view = {"total": 0, "free": 0, "usable": 0}  # a removed pool has nothing
        return {"name": name, "total": view["total"], "free": view["free"],
                "usable": view["usable"]}

    def due_commands(self) -> list[StatusCommand]:
        """The status commands whose interval has passed, each then scheduled for its next."""
        now = time.monotonic()
        due = []
        for index, command in enumerate(self.commands):
            if now >= self.next_read[index]:
                self.next_read[index] = now + command.interval
                due.append(command)
        return due


class LicenceCore(DependencyProvider):
    def setup(self) -> None:
        settings = settings_from_mapping(config)
        store = Store(create_db_engine(settings.licence_db), store_ops.LicenceTable.metadata,
                      migrations="licence")
        store.migrate()
        for name, pool in sorted(settings.licences.items()):
            # Only a missing pool: a count changed since (by hand or by a sync) is kept.
            if store_ops.ensure_pool(store, name, pool.count or 0, pool.source, pool.per_host):
                log.info("created licence pool %s with %s", name, pool.count or 0)
        self.state = LicenceState(settings, store)

    def start(self) -> None:
        self.state.announcer.start(self.container.spawn_managed_thread)

    def stop(self) -> None:
        self.state.announcer.stop()
        self.state.store.dispose()

    def get_dependency(self, worker_ctx: Any) -> LicenceState:
        return self.state


@validate_rpc_arguments
class LicenseService(holder_events.HolderService, Authenticated):
    """RPC `license`: licence pools, and leases of their tokens for task attempts."""

    name = "license"
    holds = "licence leases"
    store_ops = store_ops

    core: LicenceState = LicenceCore()
    registry: RegistryRpc = ServiceRpc("registry")
    scheduler: SchedulerRpc = ServiceRpc("scheduler")
    access = Access(store_ops.AUDIT)

    def _changed(self, names: Iterable[str]) -> None:
        """Tell the scheduler what each named pool now has free, so it releases what fits.

        The events go out after this call has replied (services.common.announcer): a worker waiting
        to start its task does not also wait for them.
        """
        self.core.announcer.announce(*names)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WRANGLER, audit="licence pool {name}")
    def set_pool(self, name: str, total: int, per_host: bool | None = None) -> dict[str, Any]:
        view = store_ops.set_pool(self.core.store, name, total, per_host=per_host)
        self._changed([view["name"]])
        return view

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WRANGLER, audit="licence pool {name}")
    def remove_pool(self, name: str) -> dict[str, Any] | None:
        removed = store_ops.remove_pool(self.core.store, str(name))
        if removed is not None:
            self._changed([removed["name"]])
        return removed

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER)
    def list_pools(self) -> list[dict[str, Any]]:
        return store_ops.pools(self.core.store)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER)
    def get_pool(self, name: str) -> dict[str, Any]:
        return store_ops.pool_view(self.core.store, str(name))

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def acquire(self, lease_id: str, task_id: int, attempt: int, worker_id: str,
                licences: dict[str, int] | list[str],
                host: str | None = None) -> dict[str, Any] | None:
        wanted = parse_licence_needs(licences, "licences")
        lease = store_ops.acquire(self.core.store, str(lease_id), int(task_id), int(attempt),
                                  str(worker_id), wanted, host=host)
        if lease is not None:
            self._changed(lease["licences"])
        return lease

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def hold_for_worker(self, lease_id: str, worker_id: str, host: str,
                        licences: dict[str, int] | list[str]) -> dict[str, Any] | None:
        """A worker's seat for its whole life (`corral worker run --hold-licence`): task 0."""
        wanted = parse_licence_needs(licences, "licences")
        lease = store_ops.acquire(self.core.store, str(lease_id), 0, 0, str(worker_id), wanted,
                                  host=host, lifetime=True)
        if lease is not None:
            self._changed(lease["licences"])
        return lease

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def release(self, lease_id: str) -> dict[str, Any] | None:
        released = store_ops.release(self.core.store, str(lease_id))
        if released is not None:
            self._changed(released["licences"])
        return released

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def release_for_worker(self, worker_id: str) -> list[dict[str, Any]]:
        released = store_ops.release_for_worker(self.core.store, str(worker_id))
        self._changed(name for lease in released for name in lease["licences"])
        return released

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WRANGLER)
    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """This service's own audit entries (the registry's list_audit gathers every service's)."""
        return audit.entries(self.core.store, store_ops.AUDIT, since, actor, limit)

    # --- holders that are gone ------------------------------------------------------------------

    def _released(self, released: list[dict[str, Any]], why: str) -> None:
        for lease in released:
            log.info("released licence lease %s (%s): %s", lease["id"],
                     ", ".join(f"{name} x{count}" for name, count in lease["licences"].items()),
                     why)
        self._changed(name for lease in released for name in lease["licences"])

    # --- timers ---------------------------------------------------------------------------------

    @timer(interval=1)
    def sync_licences(self) -> None:
        """Read each due licence server and record its counts; a failed read keeps the last ones."""
        for command in self.core.due_commands():
            try:
                counts = read_status(command)
            except RuntimeError as exc:
                log.warning("licence status command %s %s; keeping the last counts of %s",
                            " ".join(command.argv), exc,
                            ", ".join(name for name, _ in command.pools))
                continue
            for name, feature in command.pools:
                count = counts.get(feature)
                if count is None:
                    log.warning("licence status command %s reported no count of %s; keeping "
                                "the last counts of %s", " ".join(command.argv), feature, name)
                    continue
                self._record(name, count, command.source)

    def _record(self, name: str, count: LicenceCount, source: str) -> None:
        try:
            before = store_ops.pool_view(self.core.store, name)
        except NotFound:
            before = None
        after = store_ops.record_sync(self.core.store, name, count.issued, count.in_use, source)
        if before is None or (before["total"], before["free"]) != (after["total"], after["free"]):
            self._changed([name])
