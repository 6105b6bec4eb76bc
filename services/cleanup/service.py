"""The cleanup service: owns the storage root and the retention of everything in it, and asks
the services owning records (scheduler, registry, negotiator) to forget what is past its time.

Run it with `nameko run --config deploy/config.yaml services.cleanup`. The class is a thin
adapter: what is due lives in services.cleanup.policy, a pass in services.cleanup.sweep, safe
removal in shared.storage, and reading logs in services.cleanup.logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import eventlet
from nameko import config
from nameko.events import EventDispatcher
from nameko.extensions import DependencyProvider
from nameko.timer import timer

from services.cleanup import logs
from services.cleanup import store as store_ops
from services.cleanup.sweep import PassReport, Sweeper
from services.common import report_in
from services.common.access import Access, Authenticated, allow
from services.common.ask import ask
from services.common.entrypoints import ServiceRpc, event_handler, rpc
from shared import events, storage
from shared.config import Settings, settings_from_mapping
from shared.contracts import NegotiatorRpc, RegistryRpc, SchedulerRpc
from shared.db import Store, create_db_engine
from shared.errors import EXPECTED_EXCEPTIONS, NotFound
from shared.identity import Role
from shared.retention import JobFinished, ResultCollected, StorageChanged
from shared.validation import validate_rpc_arguments

log = logging.getLogger(__name__)

CLEANUP_EXCEPTIONS = EXPECTED_EXCEPTIONS  # OutsideStorage among them

STORAGE_REPEAT_SECONDS = 5.0
"""While space is short the warning goes out again this often (the scheduler lets a warning
that is not repeated lapse, so a cleanup service that died holds back nothing for long)."""


class CleanupState:
    """What every worker of the service shares: the sweeper, and what it last said of space."""

    def __init__(self, sweeper: Sweeper) -> None:
        self.sweeper = sweeper
        self.last_pass = 0.0
        self.caught_up = False  # jobs that ended before this service first heard any event
        self.storage_low: bool | None = None
        self.storage_told = 0.0

    @property
    def settings(self) -> Settings:
        return self.sweeper.settings


class CleanupCore(DependencyProvider):
    """Reads config, opens the cleanup database and hands every worker the one state."""

    def setup(self) -> None:
        settings = settings_from_mapping(config)
        store = Store(create_db_engine(settings.cleanup_db), store_ops.CleanupTable.metadata,
                      migrations="cleanup")
        store.migrate()
        settings.storage_root.mkdir(parents=True, exist_ok=True)
        self.state = CleanupState(Sweeper(settings, store))

    def stop(self) -> None:
        self.state.sweeper.store.dispose()

    def get_dependency(self, worker_ctx: Any) -> CleanupState:
        return self.state


@validate_rpc_arguments
class CleanupService(report_in.ReportsIn, Authenticated):
    """RPC `cleanup`: what would be removed, disk use, a pass now, task logs."""

    name = "cleanup"
    access = Access()

    core: CleanupState = CleanupCore()
    dispatch = EventDispatcher()
    scheduler: SchedulerRpc = ServiceRpc("scheduler")
    registry: RegistryRpc = ServiceRpc("registry")
    negotiator: NegotiatorRpc = ServiceRpc("resource_negotiator")

    # --- what the scheduler tells: jobs ending (the clocks start), results collected ------------

    @event_handler("scheduler", events.JOB_FINISHED)
    def handle_job_finished(self, payload: dict[str, Any]) -> None:
        store_ops.job_finished(self.core.sweeper.store, JobFinished.model_validate(payload),
                               time.time())

    @event_handler("scheduler", events.TASK_STARTED)
    def handle_task_started(self, payload: dict[str, Any]) -> None:
        # A finished job running again (retried): its files are in use until it ends again.
        if store_ops.job_restarted(self.core.sweeper.store, int(payload["job_id"])):
            log.info("job %s runs again: its retention waits for its new end", payload["job_id"])

    @event_handler("scheduler", events.RESULT_COLLECTED)
    def handle_result_collected(self, payload: dict[str, Any]) -> None:
        store_ops.result_collected(self.core.sweeper.store,
                                   ResultCollected.model_validate(payload))

    # --- RPC ------------------------------------------------------------------------------------

    @rpc(expected_exceptions=CLEANUP_EXCEPTIONS)
    @allow(Role.VIEWER)
    def plan(self) -> dict[str, Any]:
        """What a pass would remove now and the space it frees (a dry run: nothing is touched)."""
        return self.core.sweeper.plan()

    @rpc(expected_exceptions=CLEANUP_EXCEPTIONS)
    @allow(Role.WRANGLER)
    def clean(self) -> dict[str, Any]:
        """Run a removal pass now; what it removed and freed."""
        return self._pass().as_dict()

    @rpc(expected_exceptions=CLEANUP_EXCEPTIONS)
    @allow(Role.VIEWER)
    def usage(self) -> dict[str, Any]:
        sweeper = self.core.sweeper
        jobs = {job_id for _kind, job_id in storage.job_folders(sweeper.root)}
        users = store_ops.users_of(sweeper.store, jobs)
        for job_id in sorted(jobs - set(users))[:200]:  # running jobs: the scheduler knows them
            job = self._ask(lambda job_id=job_id: self.scheduler.get_job(job_id, task_limit=0),
                            f"no owner of job {job_id} from the scheduler")
            if job:
                users[job_id] = job["user"]
        return sweeper.usage(users)

    @rpc(expected_exceptions=CLEANUP_EXCEPTIONS)
    @allow(Role.VIEWER)
    def storage(self) -> dict[str, Any]:
        settings = self.core.sweeper.settings
        free, reason = storage.shortage(settings.storage_root, settings.storage_min_free_bytes)
        return {"root": str(settings.storage_root), "free_bytes": free,
                "threshold_bytes": settings.storage_min_free_bytes, "low": reason is not None,
                "reason": reason}

    @rpc(expected_exceptions=CLEANUP_EXCEPTIONS)
    @allow(Role.VIEWER)
    def read_log(self, task_id: int, attempt: int | None = None, offset: int = 0,
                 limit: int = 65536) -> dict[str, Any]:
        """A page of a task attempt's log (the latest attempt unless one is named), from `offset`;
        `finished` once the attempt has ended, so a follower knows when to stop."""
        task = self.scheduler.get_task(int(task_id))
        chosen = logs.pick_attempt(task, None if attempt is None else int(attempt))
        root = self.core.sweeper.root
        relative = logs.log_location(root, task, chosen)
        data, size = logs.read_page(root, relative, int(offset), int(limit))
        # Past the end: the log was capped (its middle cut out) since the follower's last page;
        # it goes on from the new end.
        cut = int(offset) > size
        start = size if cut else int(offset)
        return {"task_id": int(task_id), "attempt": chosen["number"], "offset": start,
                "next_offset": start + len(data), "size": size,
                "data": data.decode("utf-8", errors="replace"),
                "finished": chosen["state"] != "running", "cut": cut}

    # --- timers ---------------------------------------------------------------------------------

    @timer(interval=1)
    def watch_storage(self) -> None:
        """Tell the farm when the storage root's free space crosses the threshold (and keep
        saying so while it is short), so nothing new starts on a full disk."""
        state, settings = self.core, self.core.sweeper.settings
        free, reason = storage.shortage(settings.storage_root, settings.storage_min_free_bytes)
        low = reason is not None
        repeat = low and time.monotonic() - state.storage_told >= STORAGE_REPEAT_SECONDS
        if low == state.storage_low and not repeat:
            return
        if low != state.storage_low:
            log.log(logging.WARNING if low else logging.INFO, "%s",
                    reason or f"storage root has room again ({free} bytes free)")
        state.storage_low, state.storage_told = low, time.monotonic()
        self.dispatch(events.STORAGE_CHANGED, StorageChanged(
            free_bytes=free, threshold_bytes=settings.storage_min_free_bytes, low=low,
            reason=reason).model_dump(mode="json"))

    # Not eager: an RPC made before the reply listener's queue exists kills the container.
    @timer(interval=1)
    def sweep(self) -> None:
        state = self.core
        if time.monotonic() - state.last_pass < state.sweeper.settings.cleanup_interval_seconds:
            return
        state.last_pass = time.monotonic()
        self._pass()

    def _pass(self) -> PassReport:
        if not self.core.caught_up:
            self.core.caught_up = self._catch_up()
        report = self.core.sweeper.run(self._job_is_over, self._purge, self._forget_results)
        self._forget(report)
        if report.anything():
            log.info("removed %d things, freed %d bytes, %d errors, purged %d job records",
                     len(report.removed), report.bytes_freed, len(report.errors),
                     len(report.purged_jobs))
            self.dispatch(events.STORAGE_CLEANED, report.as_dict())
        return report

    def _catch_up(self, most_pages: int = 100) -> bool:
        """Learn of jobs that ended before this service's event queue existed (its first start,
        on a farm that ran without it): their clocks start from their recorded end."""
        known = {row.job_id for row in store_ops.finished_jobs(self.core.sweeper.store)}
        for state in ("done", "failed", "cancelled"):
            for page in range(1, most_pages + 1):
                listed = self._ask(lambda state=state, page=page: self.scheduler.list_jobs(
                    state=state, page=page, page_size=1000), "could not list finished jobs")
                if listed is None:
                    return False  # the scheduler is not answering: next pass
                for job in listed["jobs"]:
                    if job["id"] not in known and job.get("finished_at") is not None:
                        store_ops.job_finished(self.core.sweeper.store, JobFinished(
                            job_id=job["id"], state=job["state"], user=job["user"],
                            finished_at=job["finished_at"], keep=bool(job.get("keep")),
                            retention=job.get("retention")), time.time())
                if page * 1000 >= int(listed["total"]):
                    break
        return True

    def _job_is_over(self, job_id: int) -> float | bool:
        try:
            with eventlet.Timeout(self.core.sweeper.settings.rpc_timeout_seconds):
                job = self.scheduler.get_job(job_id, task_limit=0)
        except NotFound:
            return True
        except (Exception, eventlet.Timeout) as exc:
            log.warning("could not check job %s with the scheduler (%s): later", job_id, exc)
            return False
        if job["state"] not in ("done", "failed", "cancelled") or job["finished_at"] is None:
            return False
        return float(job["finished_at"])

    def _purge(self, finished_before: float, job_ids: list[int]) -> list[int]:
        answer = self._ask(lambda: self.scheduler.purge_jobs(finished_before, job_ids),
                           "could not purge job records", logging.WARNING)
        return list(answer["purged"]) if answer else []

    def _forget_results(self, task_ids: list[int], job_ids: list[int]) -> None:
        # Not answered: the results stay in the scheduler until the job's record is purged.
        self._ask(lambda: self.scheduler.forget_results(task_ids, job_ids),
                  "could not drop removed results from the scheduler", logging.WARNING)

    def _forget(self, report: PassReport) -> None:
        after = self.core.sweeper.settings.forget_workers_after_seconds
        if after is None:
            return
        workers = self._ask(lambda: self.registry.forget_workers(after),
                            "could not ask the registry to forget old workers")
        if workers is None:
            return
        report.forgotten_workers = list(workers["forgotten"])
        hosts = self._ask(lambda: self.negotiator.forget_hosts(after, workers["live_hosts"]),
                          "could not ask the negotiator to forget old hosts")
        report.forgotten_hosts = list(hosts or [])

    def _ask(self, call: Callable[[], Any], failing: str, level: int = logging.DEBUG) -> Any:
        """Another service's answer within the RPC timeout, or None (logged) when it has none."""
        return ask(call, self.core.sweeper.settings.rpc_timeout_seconds, failing, level)
