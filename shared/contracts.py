"""The RPC surface of each service as a typing.Protocol; callers annotate their proxies with these."""

from __future__ import annotations

from typing import Any, Protocol


class SchedulerRpc(Protocol):
    """RPC `scheduler`: jobs, tasks, attempts and leases."""

    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]: ...

    def get_job(self, job_id: int, task_limit: int = 1000,
                task_offset: int = 0) -> dict[str, Any]: ...

    def list_jobs(self, state: str | None = None, user: str | None = None, page: int = 1,
                  page_size: int = 50) -> dict[str, Any]: ...

    def get_task(self, task_id: int) -> dict[str, Any]: ...

    def cancel_job(self, job_id: int) -> dict[str, Any]: ...

    def cancel_task(self, task_id: int) -> dict[str, Any]: ...

    def claim_task(self, task_id: int, attempt: int, worker_id: str,
                   host: str | None = None) -> dict[str, Any]: ...

    def renew_lease(self, task_id: int, lease_token: str,
                    progress: int | None = None) -> dict[str, Any]: ...

    def finish_task(self, task_id: int, lease_token: str, exit_code: int | None,
                    result: Any = None, reason: str | None = None, log_tail: str | None = None,
                    log_path: str | None = None, process_started_at: float | None = None,
                    process_ended_at: float | None = None) -> dict[str, Any]: ...

    def hand_back_task(self, task_id: int, lease_token: str, reason: str) -> dict[str, Any]: ...


class RegistryRpc(Protocol):
    """RPC `registry`: workers, hosts, service heartbeats and the farm overview."""

    def register_worker(self, worker_id: str, host: str, pool: str, bands: list[str],
                        pid: int | None = None) -> dict[str, Any]: ...

    def worker_heartbeat(self, worker_id: str, state: str,
                         current_task: int | None = None) -> dict[str, Any]: ...

    def leave_worker(self, worker_id: str) -> dict[str, Any]: ...

    def service_heartbeat(self, service: str, host: str) -> None: ...

    def list_workers(self, alive: bool = False,
                     pool: str | None = None) -> list[dict[str, Any]]: ...

    def list_services(self) -> list[dict[str, Any]]: ...

    def farm_overview(self) -> dict[str, Any]: ...
