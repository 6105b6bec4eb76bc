"""The chaos suite's judge: what the payloads wrote in their ledger against what the scheduler recorded.

A run passes only with zero of each: tasks accepted but not done (lost), tasks whose payload ran to
completion more than once (duplicated), two attempts of one task alive at the same time
(concurrent), completions the scheduler does not know or a done task with no completion behind it
(unexpected), and holdings (reservations, licence leases) not returned at the end (leaked).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DONE = "done"


@dataclass(frozen=True)
class Life:
    """One attempt's run as its payload wrote it: first and last sign of life, and whether it ended."""

    task: int
    attempt: int
    pid: int
    started: float
    last_seen: float
    completed: bool


@dataclass
class Verdict:
    tasks: int = 0
    faults: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    concurrent: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.lost or self.duplicated or self.concurrent or self.unexpected
                    or self.leaked)

    def totals(self) -> str:
        return (f"tasks={self.tasks} faults={self.faults} lost={len(self.lost)} "
                f"duplicated={len(self.duplicated)} concurrent={len(self.concurrent)} "
                f"unexpected={len(self.unexpected)} leaked={len(self.leaked)}")

    def details(self) -> str:
        parts = []
        for name in ("lost", "duplicated", "concurrent", "unexpected", "leaked"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}: " + "; ".join(items[:10]))
        return "\n".join(parts)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every whole line of the ledger; a line cut short by a kill mid-write is left out."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return lines


def lives(entries: Iterable[Mapping[str, Any]]) -> list[Life]:
    """One Life per (task, attempt, pid) seen in the ledger."""
    seen: dict[tuple[int, int, int], dict[str, Any]] = {}
    for entry in entries:
        key = (int(entry["task"]), int(entry["attempt"]), int(entry["pid"]))
        life = seen.setdefault(key, {"started": entry["t"], "last_seen": entry["t"],
                                     "completed": False})
        life["started"] = min(life["started"], entry["t"])
        life["last_seen"] = max(life["last_seen"], entry["t"])
        if entry["event"] == "end":
            life["completed"] = True
    return [Life(task, attempt, pid, **values) for (task, attempt, pid), values in seen.items()]


def judge(entries: Iterable[Mapping[str, Any]], records: Mapping[int, Mapping[str, Any]],
          leaked: Iterable[str] = (), faults: int = 0) -> Verdict:
    """Compare the ledger with the scheduler's records of every accepted task.

    `records` maps a task id to the scheduler's view of it: `state` and `attempts`, each attempt
    with its `number` and `state`.
    """
    verdict = Verdict(tasks=len(records), faults=faults, leaked=list(leaked))
    by_task: dict[int, list[Life]] = defaultdict(list)
    for life in lives(entries):
        by_task[life.task].append(life)
    for task_id, record in sorted(records.items()):
        runs = sorted(by_task.get(task_id, []), key=lambda life: life.started)
        completed = [life for life in runs if life.completed]
        if record["state"] != DONE:
            verdict.lost.append(f"task {task_id} ended {record['state']}")
        if len(completed) > 1:
            verdict.duplicated.append(
                f"task {task_id} completed by attempts {[life.attempt for life in completed]}")
        for earlier, later in zip(runs, runs[1:], strict=False):
            if later.started < earlier.last_seen:
                verdict.concurrent.append(
                    f"task {task_id}: attempt {later.attempt} started "
                    f"{earlier.last_seen - later.started:.2f}s before attempt {earlier.attempt} "
                    "was last seen")
        done_numbers = {attempt["number"] for attempt in record.get("attempts", [])
                        if attempt["state"] == DONE}
        for life in completed:
            if life.attempt not in done_numbers:
                verdict.unexpected.append(
                    f"task {task_id}: attempt {life.attempt} completed; the scheduler has done "
                    f"attempts {sorted(done_numbers)}")
        if record["state"] == DONE and not completed:
            verdict.unexpected.append(f"task {task_id} is done but no payload completed it")
    for task_id in sorted(set(by_task) - set(records)):
        verdict.unexpected.append(f"task {task_id} ran but the scheduler never accepted it")
    return verdict
