"""Names of the events Corral services emit; handlers are `handle_<event>` and idempotent."""

from typing import Final

JOB_SUBMITTED: Final = "job_submitted"
JOB_FINISHED: Final = "job_finished"
TASK_STARTED: Final = "task_started"
TASK_PROGRESSED: Final = "task_progressed"
TASK_FINISHED: Final = "task_finished"
TASK_FAILED: Final = "task_failed"

WORKER_JOINED: Final = "worker_joined"
WORKER_LEFT: Final = "worker_left"
WORKER_LOST: Final = "worker_lost"
WORKER_CONTROLLED: Final = "worker_controlled"
"""A wrangler drained, disabled, enabled or stopped workers, or workers' heartbeats say they obey
something else than what is wanted of them: {"workers": {id: wanted}} (workers hear it too)."""
TASK_CANCELLED: Final = "task_cancelled"

HOST_CHANGED: Final = "host_changed"
LICENCE_CHANGED: Final = "licence_changed"

# Accounts (the registry): a token revoked before its expiry; payload shared.identity.TokenRevoked.
TOKEN_REVOKED: Final = "token_revoked"
# The cleanup service and what it hears of results and the storage root.
RESULT_COLLECTED: Final = "result_collected"
STORAGE_CLEANED: Final = "storage_cleaned"
STORAGE_CHANGED: Final = "storage_changed"
