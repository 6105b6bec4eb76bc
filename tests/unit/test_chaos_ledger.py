"""The chaos suite's judge finds each kind of wrong outcome, and passes only a clean run."""

from typing import Any

from tests.chaos.ledger import judge


def run(task: int, attempt: int, pid: int, start: float, end: float,
        completed: bool = True) -> list[dict[str, Any]]:
    lines = [{"task": task, "attempt": attempt, "pid": pid, "event": "start", "t": start}]
    lines.append({"task": task, "attempt": attempt, "pid": pid,
                  "event": "end" if completed else "alive", "t": end})
    return lines


def done(*numbers: int, failed: tuple[int, ...] = ()) -> dict[str, Any]:
    attempts = [{"number": n, "state": "done"} for n in numbers]
    attempts += [{"number": n, "state": "lost"} for n in failed]
    return {"state": "done", "attempts": attempts}


def test_a_clean_run_passes() -> None:
    ledger = run(1, 1, 10, 0.0, 1.0) + run(2, 1, 11, 0.0, 1.0)
    verdict = judge(ledger, {1: done(1), 2: done(1)})
    assert verdict.passed, verdict.details()
    assert verdict.totals().startswith("tasks=2 ")


def test_a_rerun_after_a_killed_attempt_passes() -> None:
    ledger = run(1, 1, 10, 0.0, 0.5, completed=False) + run(1, 2, 11, 1.0, 2.0)
    assert judge(ledger, {1: done(2, failed=(1,))}).passed


def test_a_task_that_never_finished_is_lost() -> None:
    verdict = judge(run(1, 1, 10, 0.0, 0.5, completed=False),
                    {1: {"state": "queued", "attempts": []}})
    assert verdict.lost == ["task 1 ended queued"]


def test_two_completions_are_duplicated() -> None:
    ledger = run(1, 1, 10, 0.0, 1.0) + run(1, 2, 11, 2.0, 3.0)
    assert judge(ledger, {1: done(2, failed=(1,))}).duplicated


def test_overlapping_attempts_are_concurrent() -> None:
    ledger = run(1, 1, 10, 0.0, 2.0, completed=False) + run(1, 2, 11, 1.0, 3.0)
    verdict = judge(ledger, {1: done(2, failed=(1,))})
    assert verdict.concurrent and not verdict.duplicated


def test_a_completion_the_scheduler_does_not_know_is_unexpected() -> None:
    verdict = judge(run(1, 1, 10, 0.0, 1.0), {1: done(2, failed=(1,))})
    assert any("attempt 1 completed" in item for item in verdict.unexpected)


def test_a_done_task_without_a_completion_is_unexpected() -> None:
    verdict = judge([], {1: done(1)})
    assert verdict.unexpected == ["task 1 is done but no payload completed it"]


def test_leaked_holdings_fail_the_run() -> None:
    verdict = judge(run(1, 1, 10, 0.0, 1.0), {1: done(1)}, leaked=["host a holds 1 core"])
    assert not verdict.passed and verdict.leaked == ["host a holds 1 core"]


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path: Any) -> None:
    from tests.chaos.ledger import read_ledger

    path = tmp_path / "ledger"
    path.write_text('{"task": 1, "attempt": 1, "pid": 3, "event": "start", "t": 0}\n{"task": 1, "at')
    assert len(read_ledger(path)) == 1
