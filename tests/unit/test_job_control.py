"""Job control on the store: pause, resume, priority, requeue, bulk filters, limits, aging, ETA."""

from typing import Any

import pytest

from services.scheduler import store as ops
from services.scheduler.dispatch import IdleWorker
from services.scheduler.service import Dispatcher
from shared.config import DEFAULT_CONFIG_PATH, load_settings
from shared.db import Store
from shared.errors import InvalidState, LimitExceeded, StaleLease
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

WORKERS = [IdleWorker("w1", "cpu", frozenset({"low", "normal", "high"}))]
HIGH_FIRST = ["high", "normal", "low"]


def submit(store: Store, tasks: int = 2, limit: int | None = None, **spec: Any) -> dict:
    plan = validate_job_spec({"tasks": [{"command": ["true"]}] * tasks, **spec}, BANDS,
                             max_env_bytes=32768, max_tasks=100000)
    return ops.get_job(store, ops.submit_job(store, plan, limit).reply["id"])


def claim(store: Store, task_id: int) -> str:
    attempt = ops.get_task(store, task_id)["attempt"]
    return ops.claim_task(store, task_id, attempt, "w1", "h", 30).reply["lease_token"]


def test_paused_job_releases_nothing_until_resumed(scheduler_store: Store) -> None:
    job = submit(scheduler_store)
    ops.pause_job(scheduler_store, job["id"])
    assert ops.get_job(scheduler_store, job["id"])["counts"] == {"paused": 2}
    assert ops.plan_next_releases(scheduler_store, WORKERS, HIGH_FIRST) == []
    assert ops.why_task(scheduler_store, job["tasks"][0]["id"], WORKERS)["code"] == "paused"
    ops.resume_job(scheduler_store, job["id"])
    assert len(ops.plan_next_releases(scheduler_store, WORKERS, HIGH_FIRST)) == 1


def test_pause_lets_running_tasks_finish_unless_told_to_kill(scheduler_store: Store) -> None:
    job = submit(scheduler_store)
    running = job["tasks"][0]["id"]
    claim(scheduler_store, running)
    assert ops.pause_job(scheduler_store, job["id"]).events == []
    assert ops.get_task(scheduler_store, running)["state"] == "running"
    outcome = ops.pause_job(scheduler_store, job["id"], kill=True)
    # The stopped attempt is named: what it held can be given back; the next attempt's cannot.
    assert outcome.events == [("task_cancelled", {"task_id": running, "job_id": job["id"],
                                                  "worker_id": "w1", "attempt": 1})]
    task = ops.get_task(scheduler_store, running)
    assert task["state"] == "paused" and task["failures"] == 0
    assert task["attempts"][0]["state"] == "cancelled"


def test_message_of_a_paused_job_claims_nothing(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=1)
    (release,) = ops.plan_next_releases(scheduler_store, WORKERS, HIGH_FIRST)
    ops.mark_dispatched(scheduler_store, [release])
    ops.pause_job(scheduler_store, job["id"])
    reply = ops.claim_task(scheduler_store, release.task_id, release.attempt, "w1", "h", 30)
    assert reply.reply["status"] == "stale"
    assert ops.get_task(scheduler_store, release.task_id)["state"] == "paused"


def test_priority_change_moves_the_job_to_another_band(scheduler_store: Store) -> None:
    low = submit(scheduler_store, tasks=1, priority=5)
    normal = submit(scheduler_store, tasks=1, priority=50)
    ops.set_job_priority(scheduler_store, low["id"], 500, "high")
    (release,) = ops.plan_next_releases(scheduler_store, WORKERS, HIGH_FIRST)
    assert release.task_id == low["tasks"][0]["id"] and release.band == "high"
    assert ops.get_job(scheduler_store, normal["id"])["state"] == "queued"


def test_requeue_of_a_running_task_puts_it_back_uncharged(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=1)
    task_id = job["tasks"][0]["id"]
    token = claim(scheduler_store, task_id)
    outcome = ops.requeue_task(scheduler_store, task_id)
    assert outcome.events == [("task_cancelled", {"task_id": task_id, "job_id": job["id"],
                                                  "worker_id": "w1", "attempt": 1})]
    task = ops.get_task(scheduler_store, task_id)
    assert (task["state"], task["failures"], task["head"]) == ("queued", 0, True)
    with pytest.raises(StaleLease):
        ops.finish_task(scheduler_store, task_id, token, 0)


def test_bulk_filters_by_user_state_and_name_pattern(scheduler_store: Store) -> None:
    a = submit(scheduler_store, name="shot010_comp", user="ana")
    b = submit(scheduler_store, name="shot010_light", user="ben")
    c = submit(scheduler_store, name="shot020_comp", user="ana")
    assert ops.select_jobs(scheduler_store, name_pattern="shot010*") == [a["id"], b["id"]]
    assert ops.select_jobs(scheduler_store, user="ana", name_pattern="*comp") == [a["id"], c["id"]]
    assert ops.select_jobs(scheduler_store, name_pattern="shot0_0*") == []  # _ is literal
    assert ops.select_jobs(scheduler_store, state="queued", user="ben") == [b["id"]]
    with pytest.raises(InvalidState):
        ops.select_jobs(scheduler_store)


def test_per_user_queue_limit_refuses_and_stores_nothing(scheduler_store: Store) -> None:
    submit(scheduler_store, tasks=8, limit=10, user="ana")
    with pytest.raises(LimitExceeded, match="user ana has 8 tasks waiting; 3 more would pass "
                                            "the limit of 10"):
        submit(scheduler_store, tasks=3, limit=10, user="ana")
    submit(scheduler_store, tasks=3, limit=10, user="ben")
    assert ops.list_jobs(scheduler_store, user="ana")["total"] == 1


def test_waiting_raises_priority_up_to_the_top_of_the_band(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=1, priority=98)
    task_id = job["tasks"][0]["id"]
    for _ in range(3):
        ops.age_waiting_tasks(scheduler_store, BANDS, older_than=-1)
    task = ops.get_task(scheduler_store, task_id)
    assert (task["priority"], task["base_priority"], task["band"]) == (99, 98, "normal")


def test_eta_comes_from_finished_tasks(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=3)
    assert ops.get_job(scheduler_store, job["id"])["eta_seconds"] is None
    first = job["tasks"][0]["id"]
    token = claim(scheduler_store, first)
    ops.finish_task(scheduler_store, first, token, 0, process_started_at=100.0,
                    process_ended_at=110.0)
    assert ops.get_job(scheduler_store, job["id"])["eta_seconds"] == 20.0


def test_why_says_when_no_host_could_ever_fit_the_task(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=1, resources={"cores": 2, "memory": "128G"})
    worker = IdleWorker("w1", "cpu", frozenset({"low", "normal", "high"}), host="render01")
    hosts = {"render01": {"totals": (32.0, 65536, 0), "free": (32.0, 65536, 0)}}
    why = ops.why_task(scheduler_store, job["tasks"][0]["id"], [worker], hosts)
    assert (why["code"], why["reason"]) == ("no_host_fits",
                                            "no host with >= 2 cores / 128 GB serves pool cpu")
    hosts = {"render01": {"totals": (32.0, 262144, 0), "free": (32.0, 1024, 0)}}
    why = ops.why_task(scheduler_store, job["tasks"][0]["id"], [worker], hosts)
    assert why["code"] == "no_room"


def test_only_more_room_on_a_host_wakes_a_release_pass(scheduler_store: Store) -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={})
    dispatcher = Dispatcher(settings, scheduler_store, spawn=lambda *_: None)
    totals = {"cores": 8, "memory_mb": 8192, "gpus": 0}
    assert dispatcher.set_host("render01", totals, totals)  # a new host: room to use
    booked = {"cores": 6, "memory_mb": 8192, "gpus": 0}
    assert not dispatcher.set_host("render01", totals, booked)  # a reservation: nothing to do
    assert dispatcher.hosts["render01"]["free"] == (6.0, 8192, 0)
    assert dispatcher.set_host("render01", totals, {"cores": 7, "memory_mb": 8192, "gpus": 0})
