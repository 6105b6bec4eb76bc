"""Things held for one task attempt (host reservations, licence leases) and when they may go.

The negotiator and the license service each keep records keyed by task, attempt and worker, and
give them back once that attempt can no longer run: its worker left or was lost, the attempt
finished or failed, or the task was cancelled. Those rules are the same for both and live here;
services.common.holder_events has the event handlers that apply them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# The scheduler's task states after which no attempt of the task runs again (TaskState values).
FINAL_TASK_STATES: Final = ("done", "failed", "cancelled")


def attempts_ended_before(task: Mapping[str, Any] | None) -> int | None:
    """Attempts of a cancelled task numbered below this have ended; None: every attempt has.

    A cancel event names no attempt, and a requeue (or a pause that kills) sends one while the
    task goes back under a new attempt that may already hold something: so only attempts older
    than the current one have ended, and the current one too when the task has ended. `task` is
    the scheduler's view of it, None when the scheduler no longer knows the task.
    """
    if task is None:
        return None
    return int(task["attempt"]) + (1 if task["state"] in FINAL_TASK_STATES else 0)
