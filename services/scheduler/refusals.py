"""When a task's end means "no licence" (OpenCue's exit 330), and how long it then waits.

A tool that checks its own licence out (or one Corral does not track) may start and find none.
Such an end is not the task's fault: the scheduler puts it back in its queue uncharged, after a
delay that doubles with each refusal in a row, up to a longest delay. After `limit` refusals in a
row the next is an ordinary failure, so a task that always says so (a wrong exit code, a pattern
that also matches a real error) spends its retry budget rather than loop for ever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shared.config import Settings


@dataclass(frozen=True)
class RefusalPolicy:
    """The farm's "no licence" exit codes and log patterns, its delays and its limit."""

    exit_codes: frozenset[int] = frozenset()
    patterns: tuple[str, ...] = ()
    delay_seconds: float = 30.0
    max_delay_seconds: float = 600.0
    limit: int = 20
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False,
                                                   compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(re.compile(p) for p in self.patterns))

    @classmethod
    def from_settings(cls, settings: Settings) -> RefusalPolicy:
        return cls(frozenset(settings.licence_refusal_exit_codes),
                   settings.licence_refusal_patterns, settings.licence_refusal_delay_seconds,
                   settings.licence_refusal_max_delay_seconds, settings.licence_refusal_limit)

    def matched(self, exit_code: int | None, reason: str | None,
                log_tail: str | None) -> str | None:
        """What says this end was "no licence" (`exit code 330`, `output matched ...`), or None.

        Only a process that exited by itself: one killed by Corral (time-out, memory, stall)
        carries a reason and ended for that reason. A success is never a refusal.
        """
        if reason is not None or exit_code is None or exit_code == 0:
            return None
        if exit_code in self.exit_codes:
            return f"exit code {exit_code}"
        for pattern in self._compiled:
            if log_tail and pattern.search(log_tail):
                return f"output matched {pattern.pattern!r}"
        return None

    def delay(self, refusals: int) -> float:
        """Seconds to wait after the `refusals`-th refusal in a row (1 for the first)."""
        growth = 2.0 ** max(0, refusals - 1)
        return min(self.max_delay_seconds, self.delay_seconds * growth)
