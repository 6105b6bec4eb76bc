"""The scheduler service: owns jobs, tasks, attempts and leases, and decides what runs next.

Run it with `nameko run --config deploy/config.yaml services.scheduler`. The class is a thin
adapter: state changes live in services._scheduler_store, release decisions in
services._dispatch.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import eventlet
from kombu import Queue
from nameko import config
from nameko.events import EventDispatcher, event_handler
from nameko.extensions import DependencyProvider
from nameko.messaging import consume
from nameko.rpc import ServiceRpc, rpc
from nameko.timer import timer

from services import _scheduler_store as store_ops
from services._band_publisher import BandPublisher
from services._dispatch import Amounts, IdleWorker, Release
from shared import events
from shared.bands import DEAD_REPORTS_QUEUE, REPORTS_QUEUE, band_for_priority, queue_name
from shared.config import Settings, settings_from_mapping
from shared.contracts import LicenseRpc, NegotiatorRpc, RegistryRpc
from shared.db import Store, create_db_engine
from shared.errors import EXPECTED_EXCEPTIONS, CorralError, InvalidSpec, NotFound, StaleLease
from shared.spec import JobPlan, validate_job_spec

log = logging.getLogger(__name__)

MAX_REPORT_TRIES = 8
"""A finish report that fails this many times (not counting refusals) is set aside."""


def _amounts(wire: dict[str, Any]) -> Amounts:
    return (float(wire.get("cores") or 0), int(wire.get("memory_mb") or 0),
            int(wire.get("gpus") or 0))


class Dispatcher:
    """The scheduler's in-process state: its store, the live workers, and the release loop."""

    def __init__(self, settings: Settings, store: Store, spawn: Any) -> None:
        self.settings = settings
        self.store = store
        self.publisher = BandPublisher(settings.amqp_uri)
        # Its own channel for the rare messages outside release passes (finish reports tried
        # again or set aside), so they never hold the lock that says a pass is running.
        self.side_publisher = BandPublisher(settings.amqp_uri)
        self._side_lock = threading.Lock()
        self.workers: dict[str, IdleWorker] = {}
        self.bands_high_first = [b.name for b in sorted(settings.bands, reverse=True)]
        self._spawn = spawn
        self._lock = threading.Lock()
        self._wanted = False
        self._last_aging = time.monotonic()
        # When each user last had a task released: fairness's tie-break between users running
        # as many tasks. Kept in memory; after a restart every user starts even.
        self.last_served: dict[str, float] = {}
        self._served_clock = 0.0
        # host -> {"totals": amounts, "free": amounts}, from the negotiator's host_changed events.
        self.hosts: dict[str, dict[str, Amounts]] = {}
        # licence -> {"total", "free"} from the licence service's licence_changed events and
        # list_pools; None until it has answered (tasks needing licences wait until then).
        self.licences: dict[str, dict[str, int]] | None = None

    def set_host(self, host: str, totals: dict[str, Any], free: dict[str, Any]) -> bool:
        """Record a host's amounts; True when it has more room than before (or is new)."""
        before = self.hosts.get(host)
        self.hosts[host] = view = {"totals": _amounts(totals), "free": _amounts(free)}
        return before is None or any(now > was for now, was in zip(view["free"], before["free"],
                                                                   strict=True))

    def set_licence(self, name: str, total: int, free: int) -> bool:
        """Record a licence pool's tokens; True when more are free than before (or it is new)."""
        if self.licences is None:
            self.licences = {}
        before = self.licences.get(name)
        self.licences[name] = {"total": int(total), "free": int(free)}
        return before is None or int(free) > before["free"]

    def set_licences(self, pools: list[dict[str, Any]]) -> None:
        """Replace the whole licence picture (a pool no longer listed was removed)."""
        self.licences = {pool["name"]: {"total": int(pool["total"]), "free": int(pool["free"])}
                         for pool in pools}

    def set_worker(self, worker_id: str, pool: str, bands: list[str], host: str = "") -> None:
        self.workers[worker_id] = IdleWorker(worker_id, pool, frozenset(bands), host)

    def drop_worker(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)

    def request_release(self) -> None:
        """Ask for a release pass soon, without making the caller wait for it."""
        self._wanted = True
        if not self._lock.locked():
            self._spawn(self.release_now)

    def release_now(self) -> int:
        """Run release passes until nobody has asked for another; at most one runs at a time."""
        self._wanted = True
        if not self._lock.acquire(blocking=False):
            return 0  # the running pass sees _wanted and goes round again
        released = 0
        try:
            while self._wanted:
                self._wanted = False
                plan = store_ops.plan_next_releases(self.store, list(self.workers.values()),
                                                    self.bands_high_first,
                                                    last_served=self.last_served,
                                                    host_free={host: view["free"] for host, view
                                                               in self.hosts.items()},
                                                    licence_free={name: pool["free"] for name, pool
                                                                  in (self.licences or {}).items()})
                if not plan:
                    continue
                for release in plan:
                    self._served_clock += 1
                    self.last_served[release.user] = self._served_clock
                published = self.publisher.publish(plan)
                store_ops.mark_dispatched(self.store, published)
                released += len(published)
        finally:
            self._lock.release()
        return released

    def send(self, queue: str, body: dict[str, Any]) -> None:
        """Publish one message to a durable queue, confirmed; raises when the broker refuses."""
        with self._side_lock:
            self.side_publisher.send(queue, body)

    def age_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_aging >= self.settings.aging_seconds:
            self._last_aging = now
            store_ops.age_waiting_tasks(self.store, self.settings.bands,
                                        self.settings.aging_seconds)

    def republish_stale(self) -> None:
        """Publish again the messages of tasks dispatched long ago that the queue no longer holds.

        A message can vanish (a queue deleted by hand, a broker that lost its disk); a message
        still waiting for a worker must not be doubled, so queues holding at least as many
        messages as they should are left alone.
        """
        stale = store_ops.stale_dispatches(self.store, self.settings.redispatch_seconds)
        if not stale:
            return
        expected = store_ops.dispatched_counts(self.store)
        resend: list[Release] = []
        with self._lock:
            for (pool, band), count in expected.items():
                depth = self.publisher.queue_depth(queue_name(pool, band))
                if depth is not None and depth < count:
                    missing = [r for r in stale if (r.pool, r.band) == (pool, band)]
                    resend.extend(missing[:count - depth])
            if resend:
                log.warning("publishing %d lost task messages again", len(resend))
                self.publisher.publish(resend)
        store_ops.touch_dispatched(self.store, stale)


class SchedulerCore(DependencyProvider):
    """Reads config, opens the scheduler's database and hands every worker the one Dispatcher."""

    def setup(self) -> None:
        settings = settings_from_mapping(config)
        store = Store(create_db_engine(settings.scheduler_db), store_ops.SchedulerTable.metadata,
                      migrations="scheduler")
        store.migrate()
        self.dispatcher = Dispatcher(settings, store, self.container.spawn_managed_thread)

    def start(self) -> None:
        extended = store_ops.extend_all_leases(self.dispatcher.store,
                                               self.dispatcher.settings.lease_seconds)
        if extended:
            log.info("gave %d running tasks one lease of grace after start-up", extended)

    def stop(self) -> None:
        self.dispatcher.publisher.close()
        self.dispatcher.side_publisher.close()
        self.dispatcher.store.dispose()

    def get_dependency(self, worker_ctx: Any) -> Dispatcher:
        return self.dispatcher


class SchedulerService:
    """RPC `scheduler`: submit and control jobs; claim, renew and finish tasks."""

    name = "scheduler"

    core: Dispatcher = SchedulerCore()
    dispatch = EventDispatcher()
    registry: RegistryRpc = ServiceRpc("registry")
    negotiator: NegotiatorRpc = ServiceRpc("resource_negotiator")
    license: LicenseRpc = ServiceRpc("license")

    def _emit(self, emitted: list[tuple[str, dict[str, Any]]]) -> None:
        for event_type, payload in emitted:
            self.dispatch(event_type, payload)

    # --- jobs -----------------------------------------------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        settings = self.core.settings
        plan = validate_job_spec(spec, settings.bands, max_env_bytes=settings.max_env_bytes,
                                 max_tasks=settings.max_tasks_per_job)
        self._check_licences(plan)
        outcome = store_ops.submit_job(self.core.store, plan, settings.max_queued_per_user)
        self.core.request_release()
        self._emit(outcome.events)
        return outcome.reply

    def _check_licences(self, plan: JobPlan) -> None:
        """Refuse a job naming a licence no pool has; with the licence service silent, accept it
        (its tasks wait, and `corral why` says so)."""
        wanted = {name: task for task in plan.tasks for name in (task.licences or {})}
        if not wanted:
            return
        pools = self._ask(self.license.list_pools,
                          f"could not check licences {', '.join(sorted(wanted))} with the licence "
                          "service", logging.WARNING)
        if pools is None:
            return
        self.core.set_licences(pools)
        known = sorted(pool["name"] for pool in pools)
        for name in sorted(wanted):
            if name not in known:
                raise InvalidSpec(
                    f"licences.{name}: no licence pool named {name!r} (task {wanted[name].name}"
                    f" needs it; pools: {', '.join(known) or 'none'}); add one with "
                    f"`corral licences set {name} COUNT`")

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def get_job(self, job_id: int, task_limit: int = 1000, task_offset: int = 0) -> dict[str, Any]:
        return store_ops.get_job(self.core.store, int(job_id), int(task_limit), int(task_offset))

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def list_jobs(self, state: str | None = None, user: str | None = None, page: int = 1,
                  page_size: int = 50) -> dict[str, Any]:
        return store_ops.list_jobs(self.core.store, state, user, int(page), int(page_size))

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def get_task(self, task_id: int) -> dict[str, Any]:
        return store_ops.get_task(self.core.store, int(task_id))

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def cancel_job(self, job_id: int) -> dict[str, Any]:
        outcome = store_ops.cancel_job(self.core.store, int(job_id))
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def cancel_task(self, task_id: int) -> dict[str, Any]:
        outcome = store_ops.cancel_task(self.core.store, int(task_id))
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def retry_task(self, task_id: int) -> dict[str, Any]:
        outcome = store_ops.retry_task(self.core.store, int(task_id))
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def retry_job(self, job_id: int) -> dict[str, Any]:
        outcome = store_ops.retry_job(self.core.store, int(job_id))
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def pause_job(self, job_id: int, kill: bool = False) -> dict[str, Any]:
        outcome = store_ops.pause_job(self.core.store, int(job_id), bool(kill))
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def resume_job(self, job_id: int) -> dict[str, Any]:
        outcome = store_ops.resume_job(self.core.store, int(job_id))
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def set_priority(self, job_id: int, priority: int) -> dict[str, Any]:
        band = band_for_priority(self.core.settings.bands, int(priority))
        if band is None:
            raise InvalidSpec(f"priority: {priority} is outside every band")
        outcome = store_ops.set_job_priority(self.core.store, int(job_id), int(priority),
                                             band.name)
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def requeue_task(self, task_id: int) -> dict[str, Any]:
        outcome = store_ops.requeue_task(self.core.store, int(task_id))
        self._emit(outcome.events)
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def bulk(self, operation: str, user: str | None = None, state: str | None = None,
             name_pattern: str | None = None, job_ids: list[int] | None = None,
             kill: bool = False, priority: int | None = None) -> dict[str, Any]:
        """Apply one job operation to every job matching the filter; each job in its own step."""
        operations = {
            "pause": lambda job_id: self.pause_job(job_id, kill),
            "resume": self.resume_job,
            "cancel": self.cancel_job,
            "retry": self.retry_job,
            "priority": lambda job_id: self.set_priority(job_id, priority),
        }
        if operation not in operations:
            raise InvalidSpec(f"operation: {operation!r} is not one of {sorted(operations)}")
        if operation == "priority" and priority is None:
            raise InvalidSpec("priority: required for the priority operation")
        results, errors = [], []
        for job_id in store_ops.select_jobs(self.core.store, user, state, name_pattern, job_ids):
            try:
                results.append(operations[operation](job_id))
            except CorralError as exc:
                errors.append({"job_id": job_id, "error": str(exc)})
        return {"operation": operation, "done": results, "errors": errors}

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def why_task(self, task_id: int) -> dict[str, Any]:
        return store_ops.why_task(self.core.store, int(task_id), self.core.workers.values(),
                                  self.core.hosts, self.core.licences)

    # --- the worker's side of a task ------------------------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def claim_task(self, task_id: int, attempt: int, worker_id: str,
                   host: str | None = None) -> dict[str, Any]:
        outcome = store_ops.claim_task(self.core.store, int(task_id), int(attempt), worker_id,
                                       host, self.core.settings.lease_seconds)
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def renew_lease(self, task_id: int, lease_token: str,
                    progress: int | None = None) -> dict[str, Any]:
        outcome = store_ops.renew_lease(self.core.store, int(task_id), lease_token, progress,
                                        self.core.settings.lease_seconds)
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def finish_task(self, task_id: int, lease_token: str, exit_code: int | None,
                    result: Any = None, reason: str | None = None, log_tail: str | None = None,
                    log_path: str | None = None, process_started_at: float | None = None,
                    process_ended_at: float | None = None,
                    peak_memory_mb: int | None = None) -> dict[str, Any]:
        outcome = store_ops.finish_task(self.core.store, int(task_id), lease_token, exit_code,
                                        result, reason, log_tail, log_path, process_started_at,
                                        process_ended_at, peak_memory_mb)
        self.core.request_release()
        self._emit(outcome.events)
        return outcome.reply

    @consume(Queue(REPORTS_QUEUE, durable=True), requeue_on_error=True)
    def handle_finish_report(self, report: dict[str, Any]) -> None:
        """A worker's finish report, published rather than called: off the RPC path, and kept
        in its durable queue while the scheduler is down.

        A stale one (an old lease, a task gone) is dropped. One that fails for any other reason
        (the database, say) is published again after a pause that grows with each try; one that
        is malformed, or still fails after MAX_REPORT_TRIES, goes to corral.reports.dead with
        the reason, for a person to look at: a poison report never loops, and none is lost.
        """
        try:
            fields = store_ops.finish_report_fields(report)
        except ValueError as exc:
            self._bury_report(report, f"malformed: {exc}")
            return
        try:
            outcome = store_ops.finish_task(self.core.store, **fields)
        except (StaleLease, NotFound) as exc:
            log.warning("finish report refused: %s", exc)
            return
        except Exception as exc:
            self._retry_report(report, exc)
            return
        self.core.request_release()
        self._emit(outcome.events)

    def _retry_report(self, report: dict[str, Any], error: Exception) -> None:
        tries = int(report.get("tries") or 0) + 1
        if tries >= MAX_REPORT_TRIES:
            self._bury_report(report, f"failed {tries} times, last: {error!r}")
            return
        log.warning("finish report of task %s failed (%r); trying again (%d of %d)",
                    report.get("task_id"), error, tries, MAX_REPORT_TRIES)
        eventlet.sleep(min(0.1 * 2 ** tries, 10.0))
        # If this publish fails too, the error reaches nameko, which puts the original back.
        self.core.send(REPORTS_QUEUE, {**report, "tries": tries})

    def _bury_report(self, report: dict[str, Any], why: str) -> None:
        log.error("finish report %r cannot be applied (%s): kept in %s", report, why,
                  DEAD_REPORTS_QUEUE)
        self.core.send(DEAD_REPORTS_QUEUE, {"report": report, "error": why,
                                            "at": time.time()})

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    def hand_back_task(self, task_id: int, lease_token: str, reason: str,
                       delay_seconds: float = 0.0) -> dict[str, Any]:
        outcome = store_ops.hand_back_task(self.core.store, int(task_id), lease_token, reason,
                                           float(delay_seconds))
        self.core.request_release()
        return outcome.reply

    # --- workers, as the registry reports them --------------------------------------------------

    @event_handler("registry", events.WORKER_JOINED)
    def handle_worker_joined(self, payload: dict[str, Any]) -> None:
        self.core.set_worker(payload["worker_id"], payload["pool"], payload["bands"],
                             payload.get("host", ""))
        self.core.request_release()

    def _ask(self, call: Callable[[], Any], failing: str, level: int = logging.DEBUG) -> Any:
        """Another service's answer within the RPC timeout, or None (logged) when it has none."""
        try:
            with eventlet.Timeout(self.core.settings.rpc_timeout_seconds):
                return call()
        except (Exception, eventlet.Timeout) as exc:
            log.log(level, "%s: %s", failing, exc)
            return None

    def _refresh_hosts(self) -> None:
        """Re-read every host's totals and free amounts (events keep them current between)."""
        # No negotiator on this farm (or not yet): tasks are placed without host limits.
        hosts = self._ask(self.negotiator.list_hosts, "no host view from the resource negotiator")
        for host in hosts or ():
            self.core.set_host(host["host"], host["totals"], host["free"])

    @event_handler("resource_negotiator", events.HOST_CHANGED)
    def handle_host_changed(self, payload: dict[str, Any]) -> None:
        # Less room (a reservation) cannot let anything more start: no release pass for it.
        if self.core.set_host(payload["host"], payload["totals"], payload["free"]):
            self.core.request_release()

    def _refresh_licences(self) -> None:
        """Re-read every licence pool (events keep them current between)."""
        # No licence service (or not yet): tasks needing licences wait; others are unaffected.
        pools = self._ask(self.license.list_pools, "no licence view from the licence service")
        if pools is not None:
            self.core.set_licences(pools)

    @event_handler("license", events.LICENCE_CHANGED)
    def handle_licence_changed(self, payload: dict[str, Any]) -> None:
        if self.core.set_licence(payload["name"], payload["total"], payload["free"]):
            self.core.request_release()

    @event_handler("registry", events.WORKER_LEFT)
    def handle_worker_left(self, payload: dict[str, Any]) -> None:
        self.core.drop_worker(payload["worker_id"])

    @event_handler("registry", events.WORKER_LOST)
    def handle_worker_lost(self, payload: dict[str, Any]) -> None:
        self.core.drop_worker(payload["worker_id"])

    # --- timers ---------------------------------------------------------------------------------

    @timer(interval=1)
    def sweep(self) -> None:
        """Expire leases, republish lost messages, and release tasks whose retry delay is over."""
        lost = store_ops.expire_leases(self.core.store)
        self.core.age_if_due()
        for item in lost:
            log.warning("task %(task_id)s: lease of worker %(worker_id)s expired", item)
        self.core.republish_stale()
        self.core.release_now()

    # Not eager: an RPC made before the reply listener's queue exists kills the container.
    @timer(interval=2)
    def refresh_workers(self) -> None:
        """Re-read the live workers from the registry (events keep it current in between)."""
        try:
            with eventlet.Timeout(self.core.settings.rpc_timeout_seconds):
                workers = self.registry.list_workers(alive=True)
                self.registry.service_heartbeat(self.name, socket.gethostname())
        except (Exception, eventlet.Timeout) as exc:
            # Registry down: keep what we know; its events will catch us up.
            log.warning("could not refresh workers from the registry: %s", exc)
            return
        self._refresh_hosts()
        self._refresh_licences()
        live = {w["worker_id"] for w in workers}
        for worker in workers:
            self.core.set_worker(worker["worker_id"], worker["pool"], worker["bands"],
                                 worker["host"])
        for worker_id in list(self.core.workers):
            if worker_id not in live:
                self.core.drop_worker(worker_id)
        self.core.request_release()
