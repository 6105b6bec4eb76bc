"""The scheduler's state changes, on SQLite and PostgreSQL alike."""

import json
import re
import time
from typing import Any

import pytest

from services.scheduler import store as ops
from services.scheduler.dispatch import IdleWorker
from shared.db import Store
from shared.errors import InvalidState, NotFound, StaleLease
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

LEASE = 5.0
ALL_BANDS = frozenset({"low", "normal", "high"})


def submit(store: Store, tasks: int = 1, **spec: Any) -> dict[str, Any]:
    raw = {"tasks": [{"command": ["true"]} for _ in range(tasks)], **spec}
    plan = validate_job_spec(raw, BANDS, max_env_bytes=32768, max_tasks=100000)
    return ops.submit_job(store, plan).reply


def task_ids(store: Store, job_id: int) -> list[int]:
    return [t["id"] for t in ops.get_job(store, job_id)["tasks"]]


def claim(store: Store, task_id: int, worker: str = "w1", attempt: int | None = None) -> dict:
    if attempt is None:
        attempt = ops.get_task(store, task_id)["attempt"]
    return ops.claim_task(store, task_id, attempt, worker, "host", LEASE).reply


def test_submit_writes_job_and_every_task(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=3, name="render", user="ana", priority=200)
    data = ops.get_job(scheduler_store, job["id"])
    assert (data["name"], data["user"], data["band"]) == ("render", "ana", "high")
    assert data["counts"] == {"queued": 3}
    assert [t["index"] for t in data["tasks"]] == [0, 1, 2]


def test_claim_moves_task_to_running_with_a_lease(scheduler_store: Store) -> None:
    job = submit(scheduler_store)
    (task_id,) = task_ids(scheduler_store, job["id"])
    reply = claim(scheduler_store, task_id)
    assert reply["status"] == "claimed" and reply["command"] == ["true"]
    task = ops.get_task(scheduler_store, task_id)
    assert task["state"] == "running" and task["worker_id"] == "w1"
    assert ops.get_job(scheduler_store, job["id"])["state"] == "running"


def test_second_claim_by_another_worker_is_stale(scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    first = claim(scheduler_store, task_id, "w1")
    assert claim(scheduler_store, task_id, "w2", attempt=first["attempt"])["status"] == "stale"
    assert len(ops.get_task(scheduler_store, task_id)["attempts"]) == 1


def test_repeated_claim_by_the_same_worker_returns_the_same_lease(scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    first = claim(scheduler_store, task_id, "w1")
    again = claim(scheduler_store, task_id, "w1", attempt=first["attempt"])
    assert again["lease_token"] == first["lease_token"]
    assert len(ops.get_task(scheduler_store, task_id)["attempts"]) == 1


def test_claim_of_an_old_attempt_is_stale(scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    assert claim(scheduler_store, task_id, attempt=7)["status"] == "stale"
    assert claim(scheduler_store, 999999, attempt=1)["status"] == "stale"


def test_successful_finish_records_result_and_finishes_the_job(scheduler_store: Store) -> None:
    job = submit(scheduler_store)
    (task_id,) = task_ids(scheduler_store, job["id"])
    token = claim(scheduler_store, task_id)["lease_token"]
    outcome = ops.finish_task(scheduler_store, task_id, token, 0, result={"frames": 3},
                              log_path="/logs/x.log", process_started_at=1.0,
                              process_ended_at=2.0)
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["exit_code"], task["result"]) == ("done", 0, {"frames": 3})
    assert task["attempts"][0]["process_ended_at"] == 2.0
    assert ops.get_job(scheduler_store, job["id"])["state"] == "done"
    assert [e for e, _ in outcome.events] == ["task_finished", "job_finished"]


def test_failure_is_retried_then_fails_with_reason_and_log_tail(scheduler_store: Store) -> None:
    job = submit(scheduler_store, retry={"max_attempts": 2})
    (task_id,) = task_ids(scheduler_store, job["id"])
    token = claim(scheduler_store, task_id)["lease_token"]
    ops.finish_task(scheduler_store, task_id, token, 3, log_tail="boom 1")
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["attempt"], task["failures"]) == ("queued", 2, 1)
    token = claim(scheduler_store, task_id)["lease_token"]
    ops.finish_task(scheduler_store, task_id, token, 3, log_tail="boom 2")
    task = ops.get_task(scheduler_store, task_id)
    assert task["state"] == "failed"
    assert task["reason"] == "exited with code 3" and task["log_tail"] == "boom 2"
    assert [a["state"] for a in task["attempts"]] == ["failed", "failed"]
    assert ops.get_job(scheduler_store, job["id"])["state"] == "failed"


def test_retry_only_on_listed_exit_codes(scheduler_store: Store) -> None:
    job = submit(scheduler_store, retry={"max_attempts": 5, "on_exit_codes": [75]})
    (task_id,) = task_ids(scheduler_store, job["id"])
    token = claim(scheduler_store, task_id)["lease_token"]
    ops.finish_task(scheduler_store, task_id, token, 75)
    assert ops.get_task(scheduler_store, task_id)["state"] == "queued"
    token = claim(scheduler_store, task_id)["lease_token"]
    ops.finish_task(scheduler_store, task_id, token, 1)
    assert ops.get_task(scheduler_store, task_id)["state"] == "failed"


def test_retry_waits_for_its_delay(scheduler_store: Store) -> None:
    job = submit(scheduler_store, retry={"max_attempts": 2, "delay_seconds": 60})
    (task_id,) = task_ids(scheduler_store, job["id"])
    token = claim(scheduler_store, task_id)["lease_token"]
    ops.finish_task(scheduler_store, task_id, token, 1)
    workers = [IdleWorker("w1", "cpu", ALL_BANDS)]
    assert ops.plan_next_releases(scheduler_store, workers, ["high", "normal", "low"]) == []


def test_report_with_an_old_token_is_refused(scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    claim(scheduler_store, task_id)
    with pytest.raises(StaleLease):
        ops.renew_lease(scheduler_store, task_id, "not-the-token", 10, LEASE)
    with pytest.raises(StaleLease):
        ops.finish_task(scheduler_store, task_id, "not-the-token", 0)
    assert ops.get_task(scheduler_store, task_id)["state"] == "running"


def test_repeated_finish_is_a_no_op(scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    token = claim(scheduler_store, task_id)["lease_token"]
    ops.finish_task(scheduler_store, task_id, token, 0)
    again = ops.finish_task(scheduler_store, task_id, token, 0)
    assert again.reply["duplicate"] and again.events == []
    assert ops.get_task(scheduler_store, task_id)["state"] == "done"


def test_expired_lease_requeues_at_head_without_charging_a_retry(scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    token = ops.claim_task(scheduler_store, task_id, 1, "w1", "host", 0.01).reply["lease_token"]
    time.sleep(0.05)
    lost = ops.expire_leases(scheduler_store)
    assert [item["task_id"] for item in lost] == [task_id]
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["attempt"], task["failures"], task["head"]) == \
        ("queued", 2, 0, True)
    assert task["attempts"][0]["state"] == "lost"
    # Once another attempt has claimed the task, the lost one's report is stale.
    ops.claim_task(scheduler_store, task_id, 2, "w2", "host", 30)
    with pytest.raises(StaleLease):
        ops.finish_task(scheduler_store, task_id, token, 0)


def test_a_late_report_of_a_lost_attempt_is_taken_while_no_other_attempt_has_claimed(
        scheduler_store: Store) -> None:
    """A payload that ended inside its lease, reported after it (its worker stopped or killed,
    the report sent by another worker of the host): the task is done, and does not run again."""
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    token = ops.claim_task(scheduler_store, task_id, 1, "w1", "host", 0.01).reply["lease_token"]
    time.sleep(0.05)
    ops.expire_leases(scheduler_store, grace_seconds=5)
    task = ops.get_task(scheduler_store, task_id)
    assert task["state"] == "queued" and task["ready_at"] > time.time() + 4
    ops.finish_task(scheduler_store, task_id, token, 0)
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["attempt"]) == ("done", 1)
    assert [a["state"] for a in task["attempts"]] == ["done"]
    # The message that would have run it again starts nothing; a repeat is answered as one.
    assert ops.claim_task(scheduler_store, task_id, 2, "w2", "host", 30).reply["status"] == "stale"
    assert ops.finish_task(scheduler_store, task_id, token, 0).reply["duplicate"] is True


def test_a_late_failure_of_a_lost_attempt_is_charged_like_any_failure(
        scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    token = ops.claim_task(scheduler_store, task_id, 1, "w1", "host", 0.01).reply["lease_token"]
    time.sleep(0.05)
    ops.expire_leases(scheduler_store)
    ops.finish_task(scheduler_store, task_id, token, 3)
    task = ops.get_task(scheduler_store, task_id)  # no retries asked for: it failed for good
    assert (task["state"], task["attempt"], task["failures"]) == ("failed", 1, 1)
    assert task["reason"] == "exited with code 3"
    assert [a["state"] for a in task["attempts"]] == ["failed"]


def test_lost_task_is_released_before_older_tasks_of_its_band(scheduler_store: Store) -> None:
    first = task_ids(scheduler_store, submit(scheduler_store, tasks=3)["id"])
    later = task_ids(scheduler_store, submit(scheduler_store)["id"])[0]
    ops.claim_task(scheduler_store, later, 1, "w1", "host", 0.01)
    time.sleep(0.05)
    ops.expire_leases(scheduler_store)
    plan = ops.plan_next_releases(scheduler_store, [IdleWorker("w2", "cpu", ALL_BANDS)],
                                  ["high", "normal", "low"])
    assert [r.task_id for r in plan] == [later]
    assert later > max(first)


def test_release_fills_each_idle_worker_once_in_priority_order(scheduler_store: Store) -> None:
    low = task_ids(scheduler_store, submit(scheduler_store, priority=5)["id"])
    normal = task_ids(scheduler_store, submit(scheduler_store, priority=50)["id"])
    high = task_ids(scheduler_store, submit(scheduler_store, priority=500)["id"])
    workers = [IdleWorker("w1", "cpu", ALL_BANDS), IdleWorker("w2", "cpu", ALL_BANDS)]
    plan = ops.plan_next_releases(scheduler_store, workers, ["high", "normal", "low"])
    assert [r.task_id for r in plan] == high + normal
    ops.mark_dispatched(scheduler_store, plan)
    # Both workers now have a message waiting for them: nothing more is released.
    assert ops.plan_next_releases(scheduler_store, workers, ["high", "normal", "low"]) == []
    assert ops.get_task(scheduler_store, low[0])["state"] == "queued"


def test_release_skips_workers_that_are_running_a_task(scheduler_store: Store) -> None:
    ids = task_ids(scheduler_store, submit(scheduler_store, tasks=2)["id"])
    claim(scheduler_store, ids[0], "w1")
    plan = ops.plan_next_releases(scheduler_store, [IdleWorker("w1", "cpu", ALL_BANDS)],
                                  ["high", "normal", "low"])
    assert plan == []


@pytest.mark.parametrize("backlog", [10, 300])  # 300: far past the rows a pass reads in order
def test_release_prefers_the_user_with_fewest_running_tasks(scheduler_store: Store,
                                                            backlog: int) -> None:
    a_tasks = task_ids(scheduler_store, submit(scheduler_store, tasks=backlog, user="a")["id"])
    claim(scheduler_store, a_tasks[0], "w1")
    b_task = task_ids(scheduler_store, submit(scheduler_store, user="b")["id"])[0]
    plan = ops.plan_next_releases(scheduler_store, [IdleWorker("w2", "cpu", ALL_BANDS)],
                                  ["high", "normal", "low"])
    assert [r.task_id for r in plan] == [b_task]


def test_cancel_job_cancels_every_open_task(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=3)
    ids = task_ids(scheduler_store, job["id"])
    claim(scheduler_store, ids[0], "w1")
    outcome = ops.cancel_job(scheduler_store, job["id"])
    assert ops.get_job(scheduler_store, job["id"])["counts"] == {"cancelled": 3}
    assert ("task_cancelled", {"task_id": ids[0], "job_id": job["id"], "worker_id": "w1",
                               "attempt": 1}) in outcome.events
    with pytest.raises(InvalidState):
        ops.cancel_task(scheduler_store, ids[1])


def test_missing_job_is_not_found(scheduler_store: Store) -> None:
    with pytest.raises(NotFound):
        ops.get_job(scheduler_store, 12345)


def test_list_jobs_filters_and_pages(scheduler_store: Store) -> None:
    for user in ["a", "b", "a"]:
        submit(scheduler_store, user=user)
    listing = ops.list_jobs(scheduler_store, user="a", page=1, page_size=1)
    assert listing["total"] == 2 and len(listing["jobs"]) == 1
    assert listing["jobs"][0]["user"] == "a"


def test_host_failing_a_job_enough_times_is_excluded_and_refused(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=3, max_host_failures=2, retry={"max_attempts": 5})
    ids = task_ids(scheduler_store, job["id"])
    for task_id in ids[:2]:
        token = claim(scheduler_store, task_id)["lease_token"]
        ops.finish_task(scheduler_store, task_id, token, 1)
    with scheduler_store.read() as session:
        assert ops.excluded_hosts(session, [job["id"]]) == {job["id"]: frozenset({"host"})}
    reply = ops.claim_task(scheduler_store, ids[2], 1, "w9", "host", LEASE).reply
    assert reply["status"] == "excluded"
    assert ops.claim_task(scheduler_store, ids[2], 2, "w9", "other", LEASE).reply["status"] == \
        "claimed"


def test_a_released_message_carries_what_its_worker_books(scheduler_store: Store) -> None:
    plain = task_ids(scheduler_store, submit(scheduler_store, priority=500)["id"])[0]
    booked = task_ids(scheduler_store, submit(
        scheduler_store, priority=50,
        resources={"cores": 2, "memory": "1G"}, preferred={"cores": 8})["id"])[0]
    workers = [IdleWorker("w1", "cpu", ALL_BANDS), IdleWorker("w2", "cpu", ALL_BANDS)]
    plan = {r.task_id: r for r in ops.plan_next_releases(scheduler_store, workers,
                                                         ["high", "normal", "low"])}
    assert plan[plain].wants is None
    wants = json.loads(plan[booked].wants or "")
    assert wants["resources"] == ops.get_task(scheduler_store, booked)["resources"]
    assert wants["resources"]["cores"] == 2 and wants["resources"]["memory_mb"] == 1024
    assert wants["preferred"]["cores"] == 8
    ops.mark_dispatched(scheduler_store, list(plan.values()))
    # A message published again says the same.
    resent = {r.task_id: r for r in ops.stale_dispatches(scheduler_store, -1)}
    assert resent[booked].wants == plan[booked].wants and resent[plain].wants is None


@pytest.mark.parametrize(("report", "error"), [
    ({"lease_token": "t"}, "task_id is missing"),
    ({"task_id": "7", "lease_token": "t"}, "task_id must be int, not '7'"),
    ({"task_id": 7, "lease_token": "t", "exit_code": True}, "exit_code must be int"),
    ({"task_id": 7, "lease_token": "t", "peak_memory_mb": {"rss": 1}},
     "peak_memory_mb must be int, not {'rss': 1}"),
    (["not", "an", "object"], "a report is a JSON object, not list"),
])
def test_a_malformed_finish_report_is_refused_naming_the_field(report: Any, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        ops.finish_report_fields(report)


def test_a_finish_report_becomes_finish_task_arguments(scheduler_store: Store) -> None:
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    token = claim(scheduler_store, task_id)["lease_token"]
    fields = ops.finish_report_fields({"task_id": task_id, "lease_token": token, "exit_code": 0,
                                       "result": {"frames": 10}, "process_started_at": 1,
                                       "process_ended_at": 2.5, "peak_memory_mb": 12})
    ops.finish_task(scheduler_store, **fields)
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["result"]) == ("done", {"frames": 10})
    assert task["attempts"][0]["peak_memory_mb"] == 12
