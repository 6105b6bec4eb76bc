"""The lease's margins, one place for both sides: when a worker fences itself, and how long the
scheduler holds a lost attempt's task back for a late report.

Timeline of one lease, from a renewal the worker sent at `sent` and the scheduler applied at
`applied` (>= sent): the worker's supervisor kills a payload not renewed since at
`sent + lease - fence_margin`; the scheduler expires the lease no earlier than `applied + lease`
and lets the task run again `lost_report_grace` later. A payload that ended on its own before
its fencing deadline, on a worker killed or stopped before it could report, has its report sent
by another worker of its host within about a second (services/worker/outbox.py): inside
`fence_margin + lost_report_grace`, so it is taken and the task is not run again.
"""

from __future__ import annotations

from shared.config import Settings


def fence_margin(settings: Settings) -> float:
    """How long before its lease would run out a worker kills a payload it could not renew.

    One heartbeat, and at least a second: room for the kill itself and for the scheduler's
    clock running a little fast against ours.
    """
    return min(max(settings.heartbeat_seconds, 1.0), settings.lease_seconds / 2)


def lost_report_grace(settings: Settings) -> float:
    """How long a task whose lease ran out waits before it may run again: one heartbeat, at
    least a second, for the late report of a payload that did end inside the lease."""
    return max(settings.heartbeat_seconds, 1.0)
