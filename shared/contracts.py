"""The RPC surface of each service as a typing.Protocol; callers annotate their proxies with these."""

from __future__ import annotations

from typing import Any, Protocol


class SchedulerRpc(Protocol):
    """RPC `scheduler`: jobs, tasks, attempts and leases."""

    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Submit a job spec (README: Job specs); returns the job. Under a `submission_key` already used,
        returns the first job with `repeated: true` instead of making another."""

    def get_job(self, job_id: int, task_limit: int = 1000, task_offset: int = 0,
                task_fields: list[str] | None = None) -> dict[str, Any]:
        """A job with `counts` by task state, `completed` (done tasks plus running progress), `eta_seconds`,
        a page of its tasks (`task_limit` 0: none), its `notify` targets and its `notifications`
        (each delivery: event, target, state pending/delivered/failed, tries, last answer).
        With `task_fields` (some of id, index, name, layer, state, progress, attempt, frame_start,
        frame_end, priority, started_at, finished_at, reason) each task has only those: a grid
        of a thousand tasks in a fraction of the time."""

    def list_jobs(self, state: str | None = None, user: str | None = None, page: int = 1,
                  page_size: int = 50, name_pattern: str | None = None) -> dict[str, Any]:
        """Jobs newest first, `{jobs, total, page, page_size}`; `state` must be a job state (queued,
        running, paused, done, failed, cancelled)."""

    def get_task(self, task_id: int) -> dict[str, Any]:
        """One task with every attempt and the log tail of its last failure."""

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """Cancel every unfinished task of a job (running ones are killed); the job ends cancelled."""

    def cancel_task(self, task_id: int) -> dict[str, Any]:
        """Cancel one task; its job ends cancelled once nothing else runs (failed if a task failed)."""

    def retry_task(self, task_id: int) -> dict[str, Any]:
        """Run a failed or cancelled task again with a fresh retry budget; its failures stop counting
        towards excluding their host."""

    def retry_job(self, job_id: int) -> dict[str, Any]:
        """Retry every failed task of a job; `{job_id, retried_tasks}`."""

    def pause_job(self, job_id: int, kill: bool = False) -> dict[str, Any]:
        """Start nothing new from the job (state paused); with `kill`, stop its running tasks now,
        uncharged."""

    def resume_job(self, job_id: int) -> dict[str, Any]:
        """Resume a paused job."""

    def set_priority(self, job_id: int, priority: int) -> dict[str, Any]:
        """Change a job's priority (and so its band), queued and running tasks alike."""

    def requeue_task(self, task_id: int) -> dict[str, Any]:
        """Put a task first in its band: a queued one moves to the front, a running one is stopped
        (uncharged), a failed one is retried."""

    def bulk(self, operation: str, user: str | None = None, state: str | None = None,
             name_pattern: str | None = None, job_ids: list[int] | None = None,
             kill: bool = False, priority: int | None = None) -> dict[str, Any]:
        """Apply `operation` (pause, resume, cancel, retry, priority) to every job matching the filters;
        `{operation, done, errors}`."""

    def why_task(self, task_id: int) -> dict[str, Any]:
        """Why a task is where it is: `{state, code, reason}` (codes: dependency, retry_delay, no_worker,
        host_excluded, no_host_fits, no_room, licence_* (licence_refused: it found no licence and waits
        to run again, uncharged), queued, paused, dispatched, running, or its end state)."""

    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Wranglers: this service's own audit entries (the registry's list_audit gathers every service's)."""

    # Read-only figures for the monitor's overview and /metrics.
    def farm_stats(self, minutes: int = 60, histogram: bool = False,
                   backlog: bool = False) -> dict[str, Any]:
        """Tasks by state, attempts by outcome, tasks finished per minute over the last
        hour, with `backlog` the tasks not started per pool and band by state (`corral status`),
        and with `histogram` a run-time histogram, for the monitor."""

    def claim_task(self, task_id: int, attempt: int, worker_id: str,
                   host: str | None = None) -> dict[str, Any]:
        """Workers: take a dispatched task under a new lease, or `{status: stale}`."""

    def renew_lease(self, task_id: int, lease_token: str,
                    progress: int | None = None) -> dict[str, Any]:
        """Workers: extend a running task's lease and record its progress (0-100)."""

    def finish_task(self, task_id: int, lease_token: str, exit_code: int | None,
                    result: Any = None, reason: str | None = None, log_tail: str | None = None,
                    log_path: str | None = None, process_started_at: float | None = None,
                    process_ended_at: float | None = None,
                    peak_memory_mb: int | None = None) -> dict[str, Any]:
        """Workers: record an attempt's end (done, a retry, or failed)."""

    def hand_back_task(self, task_id: int, lease_token: str, reason: str,
                       delay_seconds: float = 0.0) -> dict[str, Any]:
        """Workers: give a claimed task back, first in its band and uncharged."""

    def health(self) -> dict[str, Any]:
        """What of the scheduler's background work is failing, and since when (anyone may ask)."""
    # retention
    def collect_result(self, task_id: int) -> dict[str, Any]:
        """A done task's result, for its owner (or a wrangler); its files are removed a little after this."""

    def purge_jobs(self, finished_before: float, job_ids: list[int] | None = None,
                   limit: int = 500) -> dict[str, Any]:
        """The cleanup service's own call: forget jobs that ended before `finished_before`
        (kept ones excepted)."""

    def forget_results(self, task_ids: list[int] | None = None,
                       job_ids: list[int] | None = None) -> dict[str, Any]:
        """The cleanup service's own call: drop stored results whose files it removed."""


class RegistryRpc(Protocol):
    """RPC `registry`: workers, hosts, service heartbeats and the farm overview."""

    def register_worker(self, worker_id: str, host: str, pool: str, bands: list[str],
                        pid: int | None = None, name: str | None = None) -> dict[str, Any]:
        """Workers: join the farm (`name`: its identity on its host across restarts); the reply
        says what is wanted of it (`wanted`) and names the queue to publish heartbeats to
        (`heartbeats`: corral.heartbeats, README "Heartbeats")."""

    def worker_heartbeat(self, worker_id: str, state: str,
                         current_task: int | None = None) -> dict[str, Any]:
        """Workers: say the worker is alive, idle or busy; the reply says what is wanted of it
        (for workers whose registry names no heartbeat queue, and bare clients)."""

    def leave_worker(self, worker_id: str) -> dict[str, Any]:
        """Workers: leave the farm."""

    def service_heartbeat(self, service: str, host: str) -> None:
        """Services: say a service is alive."""

    def list_workers(self, alive: bool = False,
                     pool: str | None = None) -> list[dict[str, Any]]:
        """The farm's workers (`alive`: only live ones; `pool`: only that pool's)."""

    def set_worker_wanted_state(self, state: str, worker_id: str | None = None,
                                host: str | None = None, pool: str | None = None,
                                now: bool = False) -> dict[str, Any]:
        """Wranglers: drain, disable, enable or stop (`now`: hand the task back) one worker, or
        the live workers of a host or pool."""

    def list_services(self) -> list[dict[str, Any]]:
        """Each service seen and whether it is alive."""

    def farm_overview(self) -> dict[str, Any]:
        """Workers by state, queue depths, services and finish reports: what `corral status` shows."""

    # Accounts (services.registry.accounts): log in, users, tokens, revocations, the audit log.

    def authenticate(self, username: str, password: str) -> dict[str, Any]:
        """Anyone: a user's name and password for a token `{token, user, role, expires_at}`."""

    def create_user(self, username: str, role: str,
                    password: str | None = None) -> dict[str, Any]:
        """Admins: a new user with a role (viewer, artist, wrangler, admin, worker) and an
        optional password."""

    def list_users(self) -> list[dict[str, Any]]:
        """Admins: every user and their role."""

    def remove_user(self, username: str) -> dict[str, Any]:
        """Admins: remove a user and revoke every token they hold."""

    def create_token(self, username: str, name: str,
                     ttl_seconds: float | None = None) -> dict[str, Any]:
        """Admins: a new API token for a user, shown once (`ttl_seconds` None: the default lifetime)."""

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Admins: revoke a token by its id (every service refuses it from then on)."""

    def list_tokens(self, username: str | None = None) -> list[dict[str, Any]]:
        """Admins: the tokens issued (ids, names, expiry, revoked), of one user or all."""

    def revoked_tokens(self) -> list[str]:
        """The ids of every revoked token, which each service re-reads."""

    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Wranglers: every service's audit entries as one log, newest first."""
    # retention
    def forget_workers(self, gone_for_seconds: float) -> dict[str, Any]:
        """The cleanup service's own call: delete workers that left or were lost over
        `gone_for_seconds` ago."""


class NegotiatorRpc(Protocol):
    """RPC `resource_negotiator`: each host's capacity and every reservation against it.

    Amounts are dicts `{cores, memory_mb, gpus, custom}`; a missing amount is zero.
    """

    def report_host(self, host: str, cores: float, memory_mb: int,
                    gpus: list[dict[str, Any]] | None = None,
                    custom: dict[str, float] | None = None) -> dict[str, Any]:
        """Workers and pools: a host's totals; the latest report holds, and the reply's
        `replaced` names the different totals it replaced (None when nothing changed)."""

    def reserve(self, reservation_id: str, host: str, worker_id: str, task_id: int, attempt: int,
                minimum: dict[str, Any],
                preferred: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Workers: book a task's resources on a host, or None when they do not fit."""

    def release(self, reservation_id: str) -> dict[str, Any] | None:
        """Workers: give a reservation back."""

    def release_for_worker(self, worker_id: str) -> list[dict[str, Any]]:
        """Give back every reservation of a worker that left."""

    def free(self, host: str) -> dict[str, Any]:
        """What is free on one host."""

    def list_hosts(self) -> list[dict[str, Any]]:
        """Each host's totals, free amounts and reservations."""

    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Wranglers: this service's own audit entries."""
    # retention
    def forget_hosts(self, silent_for_seconds: float,
                     live_hosts: list[str] | None = None) -> list[str]:
        """The cleanup service's own call: delete hosts long silent, holding nothing, with no live worker."""


class LicenseRpc(Protocol):
    """RPC `license`: the studio's licence pools and the leases task attempts hold of them.

    A pool view is `{name, total, in_use, external_in_use, free, usable, per_host, hosts, source,
    synced_at, holders}` (`usable`: what a release pass may count on, see services.license.store);
    a lease is `{id, task_id, attempt, worker_id, licences, created_at, host, lifetime}` with
    licences name -> count.
    """

    def set_pool(self, name: str, total: int, per_host: bool | None = None) -> dict[str, Any]:
        """Create a licence pool of `total` tokens, or change its count; `per_host`: one seat per
        host covers every task on it (None: keep how it counts)."""

    def remove_pool(self, name: str) -> dict[str, Any] | None:
        """Remove a licence pool nobody holds; None when there is none of that name."""

    def list_pools(self) -> list[dict[str, Any]]:
        """Every licence pool's view."""

    def get_pool(self, name: str) -> dict[str, Any]:
        """One licence pool's view."""

    def list_audit(self, since: float | None = None, actor: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Wranglers: this service's own audit entries."""

    def acquire(self, lease_id: str, task_id: int, attempt: int, worker_id: str,
                licences: dict[str, int] | list[str],
                host: str | None = None) -> dict[str, Any] | None:
        """Workers: lease a task attempt's licences on `host`, or None when they are not free."""

    def hold_for_worker(self, lease_id: str, worker_id: str, host: str,
                        licences: dict[str, int] | list[str]) -> dict[str, Any] | None:
        """Workers: hold licences for the worker's whole life (returned when it leaves or is
        lost), or None when they are not free."""

    def release(self, lease_id: str) -> dict[str, Any] | None:
        """Workers: give a licence lease back."""

    def release_for_worker(self, worker_id: str) -> list[dict[str, Any]]:
        """Give back every licence lease of a worker that left."""


class CleanupRpc(Protocol):
    """RPC `cleanup`: the storage root (retention of logs, results and scratch), task logs.

    A plan item is `{path, kind, job_id, bytes, due_at, why}`; a log page is
    `{task_id, attempt, offset, next_offset, size, data, finished}`.
    """

    def plan(self) -> dict[str, Any]:
        """What a removal pass would remove now and the space it frees (a dry run)."""

    def clean(self) -> dict[str, Any]:
        """Wranglers: run a removal pass now; what it removed and freed."""

    def usage(self) -> dict[str, Any]:
        """Disk use of the storage root per job and per user."""

    def storage(self) -> dict[str, Any]:
        """The storage root's free space against its threshold, and why work is held back."""

    def read_log(self, task_id: int, attempt: int | None = None, offset: int = 0,
                 limit: int = 65536) -> dict[str, Any]:
        """A page of a task attempt's log from `offset` (the latest attempt unless one is named);
        `cut` when `offset` is past the end because the log was capped meanwhile (the page then
        starts at the new end)."""
