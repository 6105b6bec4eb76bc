"""Ends that say "no licence" go back to their queue uncharged, on SQLite and PostgreSQL."""

import time
from typing import Any

import pytest

from services.scheduler import store as ops
from services.scheduler.refusals import RefusalPolicy
from shared.db import Store
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

POLICY = RefusalPolicy(exit_codes=frozenset({330}), patterns=(r"(?i)no licen[cs]e available",),
                       delay_seconds=10, max_delay_seconds=25, limit=3)


def one_task(store: Store, **spec: Any) -> int:
    plan = validate_job_spec({"tasks": [{"command": ["render"]}], **spec}, BANDS,
                             max_env_bytes=32768, max_tasks=100)
    job = ops.submit_job(store, plan).reply
    return int(ops.get_job(store, job["id"])["tasks"][0]["id"])


def run_and_end(store: Store, task_id: int, exit_code: int, log_tail: str | None = None,
                reason: str | None = None) -> ops.Outcome:
    attempt = ops.get_task(store, task_id)["attempt"]
    token = ops.claim_task(store, task_id, attempt, "w1", "node-a", 30.0).reply["lease_token"]
    return ops.finish_task(store, task_id, token, exit_code, log_tail=log_tail, reason=reason,
                           refusals=POLICY)


def test_a_no_licence_exit_code_requeues_uncharged_with_a_growing_delay(
        scheduler_store: Store) -> None:
    task_id = one_task(scheduler_store)
    waits = []
    for _ in range(3):
        before = time.time()
        outcome = run_and_end(scheduler_store, task_id, 330)
        task = ops.get_task(scheduler_store, task_id)
        assert (task["state"], task["failures"]) == ("queued", 0)
        waits.append(round(task["ready_at"] - before))
    assert waits == [10, 20, 25]
    assert task["licence_refusals"] == 3
    assert [a["state"] for a in task["attempts"]] == ["handed_back"] * 3
    assert "no licence (exit code 330)" in task["attempts"][0]["reason"]
    # The attempt's licences and reservation are given back on task_failed.
    assert [(name, event["will_retry"]) for name, event in outcome.events] \
        == [("task_failed", True)]


def test_why_says_the_task_found_no_licence_and_when_it_runs_again(
        scheduler_store: Store) -> None:
    task_id = one_task(scheduler_store)
    run_and_end(scheduler_store, task_id, 330)
    answer = ops.why_task(scheduler_store, task_id, [])
    assert answer["code"] == "licence_refused" and answer["refusals"] == 1
    assert "no licence (exit code 330)" in answer["reason"]
    assert "runs again in" in answer["reason"]


def test_after_the_limit_one_more_refusal_is_an_ordinary_charged_failure(
        scheduler_store: Store) -> None:
    task_id = one_task(scheduler_store)
    for _ in range(POLICY.limit):
        run_and_end(scheduler_store, task_id, 330)
    run_and_end(scheduler_store, task_id, 330)
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["failures"]) == ("failed", 1)
    assert task["reason"] == "exited with code 330 (no licence 4 times in a row: charged)"


def test_a_pattern_in_the_log_tail_is_a_refusal(scheduler_store: Store) -> None:
    task_id = one_task(scheduler_store)
    run_and_end(scheduler_store, task_id, 1, log_tail="frame 1\nERROR: No licence available\n")
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["failures"], task["licence_refusals"]) == ("queued", 0, 1)
    assert "output matched" in task["reason"]


def test_a_task_corral_killed_is_no_refusal_whatever_it_printed(scheduler_store: Store) -> None:
    task_id = one_task(scheduler_store)
    run_and_end(scheduler_store, task_id, -9, log_tail="No licence available",
                reason="timed out after 60 s")
    assert ops.get_task(scheduler_store, task_id)["state"] == "failed"


def test_an_ordinary_failure_spends_the_retry_budget_and_resets_the_refusals(
        scheduler_store: Store) -> None:
    task_id = one_task(scheduler_store, retry={"max_attempts": 2})
    run_and_end(scheduler_store, task_id, 330)
    run_and_end(scheduler_store, task_id, 2)
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["failures"], task["licence_refusals"]) == ("queued", 1, 0)


def test_without_a_policy_the_exit_code_is_an_ordinary_failure(scheduler_store: Store) -> None:
    task_id = one_task(scheduler_store)
    token = ops.claim_task(scheduler_store, task_id, 1, "w1", "node-a", 30.0).reply["lease_token"]
    ops.finish_task(scheduler_store, task_id, token, 330)
    assert ops.get_task(scheduler_store, task_id)["state"] == "failed"


@pytest.mark.parametrize(("refusals", "delay"), [(1, 10), (2, 20), (3, 25), (30, 25)])
def test_the_delay_doubles_up_to_its_longest(refusals: int, delay: float) -> None:
    assert POLICY.delay(refusals) == delay
