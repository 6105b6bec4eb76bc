"""The scheduler service: owns jobs, tasks, attempts and leases, and decides what runs next.

Run it with `nameko run --config deploy/config.yaml services.scheduler`. The class is a thin
adapter: state changes live in services.scheduler.store, release decisions in
services.scheduler.dispatch, the in-process release loop in services.scheduler.dispatcher, the
handling of finish reports in services.scheduler.reports, and which of several instances acts
in services.scheduler.core and services.scheduler.leadership.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable
from typing import Any

import eventlet
from kombu import Queue
from nameko.events import EventDispatcher
from nameko.timer import timer

from services.common.access import Access, Authenticated, allow
from services.common.ask import ask
from services.common.entrypoints import ServiceRpc, consume, rpc
from services.scheduler import retention as retention_ops
from services.scheduler import stats as farm_stats_ops
from services.scheduler import store as store_ops
from services.scheduler.core import SchedulerCore, view_event
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.ownership import (
    env_for_owner,
    job_owner,
    submitted_by_caller,
    task_owner,
)
from services.scheduler.reports import MAX_REPORT_TRIES as MAX_REPORT_TRIES
from services.scheduler.reports import apply_finish_report
from shared import audit, events
from shared.bands import REPORTS_QUEUE, band_for_priority
from shared.contracts import LicenseRpc, NegotiatorRpc, RegistryRpc, SchedulerRpc
from shared.errors import (
    EXPECTED_EXCEPTIONS,
    CorralError,
    InvalidArgument,
    InvalidSpec,
)
from shared.identity import Role
from shared.leases import lost_report_grace
from shared.notify import studio_targets
from shared.retention import StorageChanged
from shared.spec import JobPlan, validate_job_spec
from shared.validation import validate_rpc_arguments
from shared.worker_control import WorkerControlled

log = logging.getLogger(__name__)

HELD_BY_STORAGE = ("queued", "dispatched", "no_room")
"""why-codes of tasks that would start but for a storage root short of space."""


@validate_rpc_arguments
class SchedulerService(Authenticated):
    """RPC `scheduler`: submit and control jobs; claim, renew and finish tasks."""

    name = "scheduler"

    core: Dispatcher = SchedulerCore()
    dispatch = EventDispatcher()
    registry: RegistryRpc = ServiceRpc("registry")
    negotiator: NegotiatorRpc = ServiceRpc("resource_negotiator")
    license: LicenseRpc = ServiceRpc("license")
    access = Access(store_ops.AUDIT)
    myself: SchedulerRpc = ServiceRpc("scheduler")

    def _emit(self, emitted: list[tuple[str, dict[str, Any]]]) -> None:
        for event_type, payload in emitted:
            self.dispatch(event_type, payload)

    # --- jobs -----------------------------------------------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, prepare=submitted_by_caller, audit="job {reply[id]}")
    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        settings = self.core.settings
        plan = validate_job_spec(spec, settings.bands, max_env_bytes=settings.max_env_bytes,
                                 max_tasks=settings.max_tasks_per_job,
                                 can_email=bool(settings.notifications.smtp_host))
        if settings.notifications.hooks:
            # The studio's hooks are fixed on the job now, beside its own targets.
            plan = dataclasses.replace(
                plan, notify=plan.notify + studio_targets(settings.notifications.hooks))
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
    @allow(Role.VIEWER, reply=env_for_owner)
    def get_job(self, job_id: int, task_limit: int = 1000, task_offset: int = 0,
                task_fields: list[str] | None = None) -> dict[str, Any]:
        if task_fields is not None:
            unknown = [name for name in task_fields if name not in store_ops.TASK_SUMMARY_FIELDS]
            if unknown or not task_fields:
                raise InvalidArgument(
                    f"task_fields: {unknown[0] if unknown else 'nothing'!r} is not a task field "
                    f"to ask for alone; ask for some of {', '.join(store_ops.TASK_SUMMARY_FIELDS)}")
        return store_ops.get_job(self.core.store, int(job_id), int(task_limit), int(task_offset),
                                 task_fields)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER)
    def list_jobs(self, state: str | None = None, user: str | None = None, page: int = 1,
                  page_size: int = 50, name_pattern: str | None = None) -> dict[str, Any]:
        return store_ops.list_jobs(self.core.store, state, user, int(page), int(page_size),
                                   name_pattern)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER, reply=env_for_owner)
    def get_task(self, task_id: int) -> dict[str, Any]:
        return store_ops.get_task(self.core.store, int(task_id))

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=job_owner, audit="job {job_id}")
    def cancel_job(self, job_id: int) -> dict[str, Any]:
        outcome = store_ops.cancel_job(self.core.store, int(job_id))
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=task_owner, audit="task {task_id}")
    def cancel_task(self, task_id: int) -> dict[str, Any]:
        outcome = store_ops.cancel_task(self.core.store, int(task_id))
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=task_owner, audit="task {task_id}")
    def retry_task(self, task_id: int) -> dict[str, Any]:
        outcome = store_ops.retry_task(self.core.store, int(task_id))
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=job_owner, audit="job {job_id}")
    def retry_job(self, job_id: int) -> dict[str, Any]:
        outcome = store_ops.retry_job(self.core.store, int(job_id))
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=job_owner, audit="job {job_id}")
    def pause_job(self, job_id: int, kill: bool = False) -> dict[str, Any]:
        outcome = store_ops.pause_job(self.core.store, int(job_id), bool(kill))
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=job_owner, audit="job {job_id}")
    def resume_job(self, job_id: int) -> dict[str, Any]:
        outcome = store_ops.resume_job(self.core.store, int(job_id))
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=job_owner, audit="job {job_id}")
    def set_priority(self, job_id: int, priority: int) -> dict[str, Any]:
        band = band_for_priority(self.core.settings.bands, int(priority))
        if band is None:
            raise InvalidSpec(f"priority: {priority} is outside every band")
        outcome = store_ops.set_job_priority(self.core.store, int(job_id), int(priority),
                                             band.name)
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST, owner=task_owner, audit="task {task_id}")
    def requeue_task(self, task_id: int) -> dict[str, Any]:
        outcome = store_ops.requeue_task(self.core.store, int(task_id))
        self._emit(outcome.events)
        self.core.request_release()
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ARTIST)  # each job's own rule applies to it, audit included
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
    @allow(Role.VIEWER)
    def why_task(self, task_id: int) -> dict[str, Any]:
        answer = store_ops.why_task(self.core.store, int(task_id), self.core.workers.values(),
                                    self.core.hosts, self.core.licences,
                                    held=self.core.held.values())
        shortage = self.core.storage_shortage()
        if shortage is not None and answer.get("code") in HELD_BY_STORAGE:
            return {**answer, "code": "storage_low", "reason": shortage}
        return answer

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WRANGLER)
    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """This service's own audit entries (the registry's list_audit gathers every service's)."""
        return audit.entries(self.core.store, store_ops.AUDIT, since, actor, limit)

    # --- read-only figures for the monitor (overview chart, /metrics) -------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER)
    def farm_stats(self, minutes: int = 60, histogram: bool = False,
                   backlog: bool = False) -> dict[str, Any]:
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 1440:
            raise InvalidSpec(f"minutes: {minutes!r} is not a whole number from 1 to 1440")
        return farm_stats_ops.farm_stats(self.core.store, minutes, bool(histogram), bool(backlog))

    # --- the worker's side of a task ------------------------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def claim_task(self, task_id: int, attempt: int, worker_id: str,
                   host: str | None = None) -> dict[str, Any]:
        outcome = store_ops.claim_task(self.core.store, int(task_id), int(attempt), worker_id,
                                       host, self.core.settings.lease_seconds)
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def renew_lease(self, task_id: int, lease_token: str,
                    progress: int | None = None) -> dict[str, Any]:
        outcome = store_ops.renew_lease(self.core.store, int(task_id), lease_token, progress,
                                        self.core.settings.lease_seconds)
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def finish_task(self, task_id: int, lease_token: str, exit_code: int | None,
                    result: Any = None, reason: str | None = None, log_tail: str | None = None,
                    log_path: str | None = None, process_started_at: float | None = None,
                    process_ended_at: float | None = None,
                    peak_memory_mb: int | None = None) -> dict[str, Any]:
        outcome = store_ops.finish_task(self.core.store, int(task_id), lease_token, exit_code,
                                        result, reason, log_tail, log_path, process_started_at,
                                        process_ended_at, peak_memory_mb,
                                        refusals=self.core.refusals)
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
        apply_finish_report(self.core, report, self._emit)

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.WORKER)
    def hand_back_task(self, task_id: int, lease_token: str, reason: str,
                       delay_seconds: float = 0.0) -> dict[str, Any]:
        outcome = store_ops.hand_back_task(self.core.store, int(task_id), lease_token, reason,
                                           float(delay_seconds))
        self.core.request_release()
        return outcome.reply

    # --- retention: results handed to their owner; what the cleanup service asks for --------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.VIEWER, owner=task_owner)
    def collect_result(self, task_id: int) -> dict[str, Any]:
        """A done task's result, for its owner: its files are removed a little after this."""
        outcome = retention_ops.collect_result(self.core.store, int(task_id))
        self._emit(outcome.events)
        return outcome.reply

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)
    def purge_jobs(self, finished_before: float, job_ids: list[int] | None = None,
                   limit: int = 500) -> dict[str, Any]:
        """Forget jobs that ended before `finished_before` (kept ones and ones still waited for
        excepted); the cleanup service asks, once their retention is over."""
        if job_ids is not None and not isinstance(job_ids, list):
            raise InvalidSpec("job_ids: must be a list of job ids")
        return retention_ops.purge_jobs(self.core.store, float(finished_before), job_ids,
                                        int(limit))

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(Role.ADMIN)
    def forget_results(self, task_ids: list[int] | None = None,
                       job_ids: list[int] | None = None) -> dict[str, Any]:
        """Drop stored results whose files the cleanup service removed."""
        for name, value in (("task_ids", task_ids), ("job_ids", job_ids)):
            if value is not None and not isinstance(value, list):
                raise InvalidSpec(f"{name}: must be a list of ids")
        return retention_ops.forget_results(self.core.store, task_ids or [], job_ids or [])

    @view_event("cleanup", events.STORAGE_CHANGED)
    def handle_storage_changed(self, payload: dict[str, Any]) -> None:
        state = StorageChanged.model_validate(payload)
        self.core.set_storage_low(state.reason if state.low else None)
        if not state.low:
            self.core.request_release()

    # --- workers, as the registry reports them --------------------------------------------------

    @view_event("registry", events.WORKER_JOINED)
    def handle_worker_joined(self, payload: dict[str, Any]) -> None:
        self.core.set_worker(payload["worker_id"], payload["pool"], payload["bands"],
                             payload.get("host", ""), payload.get("wanted"))
        self.core.request_release()

    @view_event("registry", events.WORKER_CONTROLLED)
    def handle_worker_controlled(self, payload: dict[str, Any]) -> None:
        """A wrangler drained, disabled, enabled or stopped workers: release by the new picture."""
        controlled = WorkerControlled.model_validate(payload)
        if any([self.core.set_wanted(worker_id, wanted)
                for worker_id, wanted in controlled.workers.items()]):
            self.core.request_release()

    def _ask(self, call: Callable[[], Any], failing: str, level: int = logging.DEBUG) -> Any:
        """Another service's answer within the RPC timeout, or None (logged) when it has none."""
        return ask(call, self.core.settings.rpc_timeout_seconds, failing, level)

    def _refresh_hosts(self) -> None:
        """Re-read every host's totals and free amounts (events keep them current between)."""
        # No negotiator on this farm (or not yet): tasks are placed without host limits.
        hosts = self._ask(self.negotiator.list_hosts, "no host view from the resource negotiator")
        for host in hosts or ():
            self.core.set_host(host["host"], host["totals"], host["free"])

    @view_event("resource_negotiator", events.HOST_CHANGED)
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

    @view_event("license", events.LICENCE_CHANGED)
    def handle_licence_changed(self, payload: dict[str, Any]) -> None:
        if self.core.set_licence(payload["name"], payload["total"],
                                 payload.get("usable", payload["free"])):
            self.core.request_release()

    @view_event("registry", events.WORKER_LEFT)
    def handle_worker_left(self, payload: dict[str, Any]) -> None:
        self.core.drop_worker(payload["worker_id"])

    @view_event("registry", events.WORKER_LOST)
    def handle_worker_lost(self, payload: dict[str, Any]) -> None:
        self.core.drop_worker(payload["worker_id"])

    # --- timers ---------------------------------------------------------------------------------

    @rpc(expected_exceptions=EXPECTED_EXCEPTIONS)
    @allow(None)  # anyone: what of its background work fails, for healthchecks
    def health(self) -> dict[str, Any]:
        """What of the scheduler's background work is failing, and since when."""
        return self.core.health()

    def _broker_answers(self) -> bool:
        """Whether a call to ourselves crosses the broker: what workers' renewals need."""
        try:
            with eventlet.Timeout(self.core.settings.rpc_timeout_seconds):
                self.myself.health()
            return True
        except (Exception, eventlet.Timeout) as exc:
            log.debug("our own call through the broker failed: %s", exc)
            return False

    @timer(interval=1)
    def sweep(self) -> None:
        """Expire leases, republish lost messages, and release tasks whose retry delay is over.

        Every step survives a database or broker error: it is logged, paused and tried again,
        and `health` says so; a sweep never ends the service.
        """
        core = self.core
        if not core.leading():
            return  # the leader sweeps; a standby only answers and keeps its views
        if core.troubles.run("lease sweep",
                             lambda: core.may_expire_leases(self._broker_answers()
                                                             and core.reports_consumed())):
            lost = core.troubles.run("lease sweep", lambda: store_ops.expire_leases(
                core.store, lost_report_grace(core.settings)))
            for item in lost or ():
                log.warning("task %(task_id)s: lease of worker %(worker_id)s expired", item)
        core.troubles.run("aging", core.age_if_due)
        core.troubles.run("republishing", core.republish_stale)
        core.troubles.run("release pass", core.release_now)

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
                                 worker["host"], worker.get("wanted"))
        for worker_id in [*self.core.workers, *self.core.held]:
            if worker_id not in live:
                self.core.drop_worker(worker_id)
        self.core.views_stale = False
        if self.core.leading():
            # With the live workers known, end what no host of theirs may ever take.
            self._emit(store_ops.end_unservable(self.core.store, self.core.live_workers()).events)
            self.core.request_release()
