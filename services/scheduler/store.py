"""The scheduler's store, its one public surface: its tables and every change and read of them.

The tables are jobs, tasks, their dependencies and attempts; nothing here uses nameko.

Each function that changes state runs in one transaction and returns the events to emit once it
has committed. Every one is safe to run twice: RPC requests are redelivered when a service dies
between doing the work and acknowledging the request.

The work lives in private modules beside this one, re-exported here so that callers import
`services.scheduler.store` alone: models (the tables, their states and shared lookups),
readiness (dependencies and a job's end), submit, release (the release pass's reads and marks),
attempts (claim, renew, finish, hand back, lease expiry), control (cancel, retry, pause, resume,
priority, requeue, aging) and reads (get_job, list_jobs, get_task, why); leadership holds the
leader lease's table and its reads and changes.
"""

from __future__ import annotations

from services.scheduler.attempts import (
    OUT_OF_MEMORY,
    claim_task,
    expire_leases,
    extend_all_leases,
    finish_report_fields,
    finish_task,
    hand_back_task,
    renew_lease,
)
from services.scheduler.control import (
    age_waiting_tasks,
    cancel_job,
    cancel_task,
    pause_job,
    requeue_task,
    resume_job,
    retry_job,
    retry_task,
    set_job_priority,
)
from services.scheduler.leadership import LeaderLease
from services.scheduler.models import (
    ACTIVE_TASK_STATES,
    AUDIT,
    FINAL_JOB_STATES,
    FINAL_TASK_STATES,
    WAITING_TASK_STATES,
    Attempt,
    AttemptState,
    Job,
    JobState,
    Outcome,
    Task,
    TaskDependency,
    TaskState,
    _get_task,
    job_counts,
)
from services.scheduler.readiness import (
    job_finished_event,
    unmet_dependencies,
)
from services.scheduler.reads import (
    TASK_SUMMARY_FIELDS,
    WANTED_WORDS,
    get_job,
    get_task,
    held_reason,
    list_jobs,
    running_on_workers,
    select_jobs,
    why_task,
)
from services.scheduler.release import (
    CANDIDATE_COLUMNS,
    dispatched_counts,
    end_unservable,
    excluded_hosts,
    exclusion_reason,
    last_served,
    licences_of,
    mark_dispatched,
    needs_of,
    plan_next_releases,
    stale_dispatches,
    touch_dispatched,
    wants_of,
)
from services.scheduler.submit import submit_job
from services.scheduler.tables import SchedulerTable

__all__ = [
    "ACTIVE_TASK_STATES",
    "AUDIT",
    "Attempt",
    "AttemptState",
    "CANDIDATE_COLUMNS",
    "FINAL_JOB_STATES",
    "FINAL_TASK_STATES",
    "Job",
    "JobState",
    "LeaderLease",
    "OUT_OF_MEMORY",
    "Outcome",
    "SchedulerTable",
    "TASK_SUMMARY_FIELDS",
    "Task",
    "TaskDependency",
    "TaskState",
    "WAITING_TASK_STATES",
    "WANTED_WORDS",
    "_get_task",
    "age_waiting_tasks",
    "cancel_job",
    "cancel_task",
    "claim_task",
    "dispatched_counts",
    "end_unservable",
    "excluded_hosts",
    "exclusion_reason",
    "expire_leases",
    "extend_all_leases",
    "finish_report_fields",
    "finish_task",
    "get_job",
    "get_task",
    "hand_back_task",
    "held_reason",
    "job_counts",
    "job_finished_event",
    "last_served",
    "licences_of",
    "list_jobs",
    "mark_dispatched",
    "needs_of",
    "pause_job",
    "plan_next_releases",
    "renew_lease",
    "requeue_task",
    "resume_job",
    "retry_job",
    "retry_task",
    "running_on_workers",
    "select_jobs",
    "set_job_priority",
    "stale_dispatches",
    "submit_job",
    "touch_dispatched",
    "unmet_dependencies",
    "wants_of",
    "why_task",
]
