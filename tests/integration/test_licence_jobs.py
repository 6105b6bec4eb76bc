"""Jobs that need licences, on real workers: they wait for free tokens, say why, and give them back."""

import json
import signal
import time
from pathlib import Path

import pytest
from kombu import Connection

from shared.errors import InvalidSpec
from tests.farm import Farm
from tests.integration.test_resources import assert_never_at_once, recorded


def start_with_licences(farm: Farm, workers: int) -> None:
    farm.start(workers=0)
    farm.start_service("license")
    for number in range(workers):
        farm.start_worker(name=f"worker{number + 1}")


def free(farm: Farm, name: str) -> int:
    return int(farm.rpc.license.get_pool(name)["free"])


def test_tasks_share_the_last_licence_one_at_a_time_and_say_why_they_wait(
        farm: Farm, tmp_path: Path) -> None:
    start_with_licences(farm, workers=2)
    farm.rpc.license.set_pool("houdini", 1)
    ledger = tmp_path / "ledger"
    job = farm.submit([{"command": recorded(ledger, 1.0)}] * 3, licences={"houdini": 1})
    tasks = [t["id"] for t in farm.rpc.scheduler.get_job(job["id"])["tasks"]]
    farm.wait_for(lambda: free(farm, "houdini") == 0, 20, "the licence to be taken")
    why = farm.wait_for(lambda: next(
        (w for w in map(farm.rpc.scheduler.why_task, tasks) if w["state"] == "queued"), None),
        20, "a task waiting for the licence")
    assert (why["code"], why["reason"]) == ("licence_exhausted",
                                            "licence houdini exhausted (1 of 1 in use, needs 1)")
    done = farm.wait_for_job(job["id"], timeout=60)
    assert done["counts"] == {"done": 3}
    assert_never_at_once(ledger)  # two idle workers, one token
    farm.wait_for(lambda: free(farm, "houdini") == 1, 20, "every lease to be given back")
    assert all(farm.rpc.scheduler.get_task(t)["failures"] == 0 for t in tasks)


def test_a_job_naming_a_licence_no_pool_has_is_refused_and_nothing_stored(farm: Farm) -> None:
    start_with_licences(farm, workers=0)
    farm.rpc.license.set_pool("nuke", 2)
    with pytest.raises(InvalidSpec) as refused:
        farm.submit([{"command": ["true"]}], licences=["houdini"])
    assert "licences.houdini: no licence pool named 'houdini'" in str(refused.value)
    assert "pools: nuke" in str(refused.value)
    assert farm.rpc.scheduler.list_jobs()["total"] == 0


def test_worker_hands_a_task_back_uncharged_when_its_licence_is_not_free(farm: Farm) -> None:
    start_with_licences(farm, workers=1)
    farm.rpc.license.set_pool("nuke", 1)
    assert farm.rpc.license.acquire("by hand", 0, 0, "someone", {"nuke": 1}) is not None
    job = farm.submit([{"command": ["true"]}], licences={"nuke": 1})
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    why = farm.wait_for(lambda: (lambda w: w if w["code"] == "licence_exhausted" else None)(
        farm.rpc.scheduler.why_task(task_id)), 10, "the task to wait for its licence")
    assert why["reason"] == "licence nuke exhausted (1 of 1 in use, needs 1)"
    # A message for it anyway (a scheduler with a stale view would send one): only the license
    # service's own check stands between the task and a licence that is not there.
    with Connection(farm.amqp_uri) as connection:
        connection.Producer().publish(
            json.dumps({"task_id": task_id, "attempt": 1, "licences": {"nuke": 1}}),
            routing_key="corral.cpu.normal", content_type="application/json")
    task = farm.wait_for(lambda: (lambda t: t if t["attempts"] and t["attempts"][0]["state"]
                                  != "running" else None)(farm.rpc.scheduler.get_task(task_id)),
                         20, "the worker to try the task and give it back")
    assert task["attempts"][0]["state"] == "handed_back"
    assert task["attempts"][0]["reason"] == "licences not free: 1 nuke"
    assert task["failures"] == 0
    farm.rpc.license.release("by hand")  # announced: the scheduler sends the task again
    assert farm.wait_for_job(job["id"], timeout=30)["state"] == "done"
    farm.wait_for(lambda: free(farm, "nuke") == 1, 20, "the lease to be given back")


def test_a_claimed_task_keeps_its_lease_while_its_licence_is_slow_to_come(farm: Farm,
                                                                          tmp_path: Path) -> None:
    """The lease is renewed from the claim on: a license service that stalls for longer than a
    lease (3 s here) delays the task but never makes the scheduler give it to someone else."""
    start_with_licences(farm, workers=2)
    farm.rpc.license.set_pool("nuke", 1)
    warm_up = farm.submit([{"command": ["true"]}], licences={"nuke": 1})
    assert farm.wait_for_job(warm_up["id"])["state"] == "done"
    farm.wait_for(lambda: free(farm, "nuke") == 1, 20, "the warm-up lease to be given back")
    time.sleep(2.5)  # one refresh: the scheduler has seen the token come back
    license_process = farm.processes["license"]
    license_process.send_signal(signal.SIGSTOP)
    try:
        job = farm.submit([{"command": recorded(tmp_path / "ledger", 0.2)}],
                          licences={"nuke": 1})
        task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
        farm.wait_for(lambda: farm.rpc.scheduler.get_task(task_id)["state"] == "running", 20,
                      "a worker to claim the task and wait for its licence")
        time.sleep(8)  # well past the 3 s lease
        assert farm.rpc.scheduler.get_task(task_id)["state"] == "running"
    finally:
        license_process.send_signal(signal.SIGCONT)
    done = farm.wait_for_job(job["id"], timeout=30)
    task = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])
    assert [a["state"] for a in task["attempts"]] == ["done"]
    assert len((tmp_path / "ledger").read_text().splitlines()) == 2  # one start, one end
