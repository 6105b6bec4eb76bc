"""A job always ends, and says what happened: bad-host exclusion, end states, dependents."""

import itertools
from typing import Any

import pytest

from services.scheduler import store as ops
from services.scheduler.dispatch import IdleWorker
from shared.db import Store
from shared.errors import InvalidSpec, InvalidState
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

ALL_BANDS = frozenset({"low", "normal", "high"})
ON_VM = [IdleWorker("w1", "cpu", ALL_BANDS, "vm"), IdleWorker("w2", "cpu", ALL_BANDS, "vm")]


def submit(store: Store, commands: list[list[str]], **spec: Any) -> dict[str, Any]:
    plan = validate_job_spec({"tasks": [{"command": c} for c in commands], **spec}, BANDS,
                             max_env_bytes=32768, max_tasks=1000)
    return ops.get_job(store, ops.submit_job(store, plan).reply["id"])


def run(store: Store, task_id: int, exit_code: int, host: str = "vm") -> None:
    attempt = ops.get_task(store, task_id)["attempt"]
    claimed = ops.claim_task(store, task_id, attempt, "w1", host, 30).reply
    assert claimed["status"] == "claimed", claimed
    ops.finish_task(store, task_id, claimed["lease_token"], exit_code)


def failing_job_on_one_host(store: Store) -> tuple[dict[str, Any], list[int]]:
    """The reproduction: false, false, false, true, true on a farm of one host."""
    job = submit(store, [["false"]] * 3 + [["true"]] * 2)
    ids = [t["id"] for t in job["tasks"]]
    for task_id in ids[:3]:
        run(store, task_id, 1)
    return job, ids


# --- a job that can never finish -----------------------------------------------------------------

def test_why_names_the_exclusion_that_holds_a_task_back(scheduler_store: Store) -> None:
    job, ids = failing_job_on_one_host(scheduler_store)
    # The release rule passes the task over on this host...
    assert ops.plan_next_releases(scheduler_store, ON_VM, ["high", "normal", "low"]) == []
    # ...and why says so, from the same rule.
    answer = ops.why_task(scheduler_store, ids[3], ON_VM)
    assert answer["code"] == "host_excluded"
    assert answer["reason"] == ("host vm is excluded from this job after 3 failures; no other "
                                "host serves pool cpu (band normal)")


def test_a_job_no_live_host_may_serve_ends_failed_with_the_reason(scheduler_store: Store) -> None:
    job, ids = failing_job_on_one_host(scheduler_store)
    assert ops.get_job(scheduler_store, job["id"])["state"] == "running"
    outcome = ops.end_unservable(scheduler_store, ON_VM)
    assert outcome.reply == {"failed_tasks": 2}
    data = ops.get_job(scheduler_store, job["id"])
    assert data["state"] == "failed" and data["counts"] == {"failed": 5}
    assert data["tasks"][3]["reason"].startswith("host vm is excluded from this job")
    finished = [payload for name, payload in outcome.events if name == "job_finished"]
    assert [{key: payload[key] for key in ("job_id", "state", "user")} for payload in finished] \
        == [{"job_id": job["id"], "state": "failed", "user": "anonymous"}]


def test_a_job_waits_while_another_host_may_serve_it_or_no_worker_is_there(
        scheduler_store: Store) -> None:
    job, ids = failing_job_on_one_host(scheduler_store)
    elsewhere = [*ON_VM, IdleWorker("w3", "cpu", ALL_BANDS, "other")]
    assert ops.end_unservable(scheduler_store, elsewhere).reply == {"failed_tasks": 0}
    assert ops.end_unservable(scheduler_store, []).reply == {"failed_tasks": 0}
    assert ops.get_job(scheduler_store, job["id"])["counts"] == {"failed": 3, "queued": 2}
    (release,) = [r for r in ops.plan_next_releases(scheduler_store, elsewhere,
                                                    ["high", "normal", "low"])]
    assert release.worker_id == "w3"
    assert ops.why_task(scheduler_store, ids[4], elsewhere)["code"] == "queued"


def test_retry_clears_what_it_retries_from_the_exclusion(scheduler_store: Store) -> None:
    job, ids = failing_job_on_one_host(scheduler_store)
    ops.end_unservable(scheduler_store, ON_VM)
    assert ops.retry_job(scheduler_store, job["id"]).reply == {"job_id": job["id"],
                                                              "retried_tasks": 5}
    assert ops.get_job(scheduler_store, job["id"])["state"] == "running"
    assert ops.why_task(scheduler_store, ids[3], ON_VM)["code"] == "queued"
    releases = ops.plan_next_releases(scheduler_store, ON_VM, ["high", "normal", "low"])
    assert len(releases) == 2
    assert ops.end_unservable(scheduler_store, ON_VM).reply == {"failed_tasks": 0}


def test_retrying_one_task_excuses_its_own_failures_only(scheduler_store: Store) -> None:
    job, ids = failing_job_on_one_host(scheduler_store)
    ops.retry_task(scheduler_store, ids[0])  # two failures left on vm: below the limit of 3
    assert ops.why_task(scheduler_store, ids[3], ON_VM)["code"] == "queued"
    run(scheduler_store, ids[0], 1)  # fails again: vm is excluded once more
    assert ops.why_task(scheduler_store, ids[3], ON_VM)["code"] == "host_excluded"


# --- a job's end state -------------------------------------------------------------------------------

ENDS = ("done", "failed", "cancelled")


def end_task(store: Store, task_id: int, how: str) -> None:
    if how == "cancelled":
        ops.cancel_task(store, task_id)
    else:
        run(store, task_id, 0 if how == "done" else 1, host=f"h{task_id}")


def expected_state(ends: tuple[str, ...]) -> str:
    return "failed" if "failed" in ends else "cancelled" if "cancelled" in ends else "done"


@pytest.mark.parametrize("ends", [combo for size in (1, 2, 3)
                                  for combo in itertools.product(ENDS, repeat=size)],
                         ids="-".join)
def test_every_combination_of_task_ends_gives_the_job_and_its_dependents_their_state(
        scheduler_store: Store, ends: tuple[str, ...]) -> None:
    job = submit(scheduler_store, [["true"]] * len(ends))
    dependent = submit(scheduler_store, [["true"]], depends_on=[job["id"]])
    for task, how in zip(job["tasks"], ends, strict=True):
        end_task(scheduler_store, task["id"], how)
    assert ops.get_job(scheduler_store, job["id"])["state"] == expected_state(ends)
    waiting = ops.get_job(scheduler_store, dependent["id"])
    (after,) = waiting["tasks"]
    if expected_state(ends) == "done":
        assert after["state"] == "queued"
    else:
        assert after["state"] == "waiting"
        why = ops.why_task(scheduler_store, after["id"], ON_VM)
        assert why["code"] == "dependency"
        assert f"job {job['id']} (job) is {expected_state(ends)}" in why["reason"]


def test_a_cancelled_job_runs_its_dependents_once_retried_and_done(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["true"]])
    dependent = submit(scheduler_store, [["true"]], depends_on=[job["id"]])
    (task,) = job["tasks"]
    ops.cancel_task(scheduler_store, task["id"])
    assert ops.get_job(scheduler_store, job["id"])["state"] == "cancelled"
    ops.retry_task(scheduler_store, task["id"])
    run(scheduler_store, task["id"], 0)
    assert ops.get_job(scheduler_store, job["id"])["state"] == "done"
    assert ops.get_job(scheduler_store, dependent["id"])["tasks"][0]["state"] == "queued"


# --- job control that said one thing and did another ---------------------------------------------

def test_requeue_moves_a_queued_task_to_the_head_of_its_band(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["true"]] * 3)
    last = job["tasks"][2]["id"]
    assert ops.why_task(scheduler_store, last, ON_VM[:1])["position"] == 3
    reply = ops.requeue_task(scheduler_store, last).reply
    assert reply == {"task_id": last, "state": "queued", "head": True}
    assert ops.why_task(scheduler_store, last, ON_VM[:1])["position"] == 1
    (release,) = ops.plan_next_releases(scheduler_store, ON_VM[:1], ["high", "normal", "low"])
    assert release.task_id == last


def test_a_paused_job_is_listed_as_paused_and_resumes_to_what_it_was(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["true"]] * 2)
    ops.pause_job(scheduler_store, job["id"])
    assert ops.get_job(scheduler_store, job["id"])["state"] == "paused"
    listed = ops.list_jobs(scheduler_store, state="paused")["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    ops.resume_job(scheduler_store, job["id"])
    assert ops.get_job(scheduler_store, job["id"])["state"] == "queued"
    run(scheduler_store, job["tasks"][0]["id"], 0)
    ops.pause_job(scheduler_store, job["id"])
    ops.resume_job(scheduler_store, job["id"])
    assert ops.get_job(scheduler_store, job["id"])["state"] == "running"


# --- a submission repeated after a timeout ---------------------------------------------------------

def test_a_submission_repeated_under_its_key_returns_the_first_job(scheduler_store: Store) -> None:
    first = submit(scheduler_store, [["true"]], submission_key="shot010-comp-v3", user="ana")
    again = ops.submit_job(scheduler_store, validate_job_spec(
        {"tasks": [{"command": ["true"]}], "submission_key": "shot010-comp-v3", "user": "ana"},
        BANDS, max_env_bytes=32768, max_tasks=10))
    assert again.reply["id"] == first["id"] and again.reply["repeated"] is True
    assert again.events == []
    assert ops.list_jobs(scheduler_store)["total"] == 1
    other = submit(scheduler_store, [["true"]], submission_key="shot010-comp-v4", user="ana")
    assert other["id"] != first["id"]
    with pytest.raises(InvalidSpec, match="used by another user"):
        submit(scheduler_store, [["true"]], submission_key="shot010-comp-v3", user="ben")


# --- reads that misled --------------------------------------------------------------------------

def test_a_job_read_counts_running_progress_not_failures_and_has_an_eta_before_any_finish(
        scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["false"], ["true"], ["true"]])
    ids = [t["id"] for t in job["tasks"]]
    run(scheduler_store, ids[0], 1)
    claimed = ops.claim_task(scheduler_store, ids[1], 1, "w1", "vm", 30).reply
    ops.renew_lease(scheduler_store, ids[1], claimed["lease_token"], 30, 30)
    data = ops.get_job(scheduler_store, job["id"], task_limit=0)
    assert data["completed"] == 0.3  # the failure is no progress; the running task's 30 % is
    assert data["eta_seconds"] is not None


def test_job_fields_carry_their_real_types_and_a_bogus_state_filter_is_refused(
        scheduler_store: Store) -> None:
    first = submit(scheduler_store, [["true"]])
    second = submit(scheduler_store, [["true"]], depends_on=[first["id"]])
    assert ops.get_job(scheduler_store, second["id"])["depends_on"] == [first["id"]]
    assert ops.list_jobs(scheduler_store)["jobs"][0]["depends_on"] == [first["id"]]
    with pytest.raises(InvalidState, match="'bogus' is not a job state"):
        ops.list_jobs(scheduler_store, state="bogus")
    with pytest.raises(InvalidState, match="'bogus' is not a job state"):
        ops.select_jobs(scheduler_store, state="bogus")
