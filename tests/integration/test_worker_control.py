"""Drain, disable, enable and stop real workers through the registry, as a wrangler does."""

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from shared.errors import PermissionDenied
from shared.identity import Role
from tests.farm import Farm, wait_until


def wrangler(farm: Farm) -> Any:
    """The registry as a wrangler named wendy calls it."""
    return farm.client(farm.token_for("wendy", Role.WRANGLER)).registry


def worker_entry(farm: Farm, worker_id: str) -> dict[str, Any]:
    return next(w for w in farm.rpc.registry.list_workers() if w["worker_id"] == worker_id)


def task_of(farm: Farm, job: dict[str, Any]) -> dict[str, Any]:
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    return dict(farm.rpc.scheduler.get_task(task_id))


def running_on(farm: Farm, job: dict[str, Any]) -> str | None:
    task = task_of(farm, job)
    return task["worker_id"] if task["state"] == "running" else None


def test_drain_lets_the_running_task_finish_starts_nothing_new_and_others_take_the_queue(
        farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=0)
    drained = farm.start_worker(name="drained")
    release = tmp_path / "release"
    long_job = farm.submit([{"command": wait_until(release)}])
    farm.wait_for(lambda: running_on(farm, long_job) == drained, 20, "the long task to run")
    other = farm.start_worker(name="other")

    reply = wrangler(farm).set_worker_wanted_state(state="drain", worker_id=drained)
    assert reply["workers"] == {drained: "drain"}
    farm.wait_for(lambda: worker_entry(farm, drained)["state"] == "draining", 10,
                  "the drained worker to say it is draining")

    queued = farm.submit([{"command": ["true"]} for _ in range(3)])
    assert farm.wait_for_job(queued["id"])["counts"] == {"done": 3}
    workers = {a["worker_id"] for t in farm.rpc.scheduler.get_job(queued["id"])["tasks"]
               for a in farm.rpc.scheduler.get_task(t["id"])["attempts"]}
    assert workers == {other}
    assert running_on(farm, long_job) == drained  # still running, untouched

    release.touch()
    assert farm.wait_for_job(long_job["id"])["state"] == "done"
    farm.wait_for(lambda: worker_entry(farm, drained)["state"] == "drained", 10,
                  "the drained worker to be idle and drained")
    farm.kill("other", signal.SIGTERM)
    later = farm.submit([{"command": ["true"]}])
    time.sleep(2)  # a heartbeat or four: the drained worker, the only one left, takes nothing
    assert task_of(farm, later)["state"] == "queued"
    why = farm.rpc.scheduler.why_task(task_of(farm, later)["id"])
    assert why["code"] == "workers_held" and drained in why["reason"], why

    wrangler(farm).set_worker_wanted_state(state="enable", worker_id=drained)
    assert farm.wait_for_job(later["id"])["state"] == "done"
    assert task_of(farm, later)["attempts"][0]["worker_id"] == drained
    entries = farm.rpc.registry.list_audit(actor="wendy")
    assert [e["action"] for e in entries] == ["set_worker_wanted_state"] * 2
    assert {e["target"] for e in entries} == {f"drain worker {drained}",
                                              f"enable worker {drained}"}


def test_a_disabled_worker_stays_disabled_when_it_is_started_again(farm: Farm) -> None:
    farm.start(workers=0)
    first = farm.start_worker(name="first")
    name = worker_entry(farm, first)["name"]
    wrangler(farm).set_worker_wanted_state(state="disable", worker_id=first)
    farm.wait_for(lambda: worker_entry(farm, first)["state"] == "disabled", 10,
                  "the worker to say it is disabled")
    farm.kill("first", signal.SIGTERM)

    again = farm.start_worker(name="again")
    entry = worker_entry(farm, again)
    assert (entry["name"], entry["wanted"]) == (name, "disable")
    job = farm.submit([{"command": ["true"]}])
    time.sleep(2)
    assert task_of(farm, job)["state"] == "queued"
    why = farm.rpc.scheduler.why_task(task_of(farm, job)["id"])
    assert why["code"] == "workers_held" and why["workers"] == {again: "disable"}, why
    listed = {w["worker_id"]: w["wanted"] for w in farm.rpc.registry.list_workers(alive=True)}
    assert listed == {again: "disable"}

    wrangler(farm).set_worker_wanted_state(state="enable", worker_id=again)
    assert farm.wait_for_job(job["id"])["state"] == "done"


def test_stop_lets_the_running_task_finish_then_the_worker_exits(farm: Farm,
                                                                 tmp_path: Path) -> None:
    farm.start(workers=0)
    stopping = farm.start_worker(name="stopping")
    release = tmp_path / "release"
    job = farm.submit([{"command": wait_until(release)}])
    farm.wait_for(lambda: running_on(farm, job) == stopping, 20, "the task to run")

    wrangler(farm).set_worker_wanted_state(state="stop", worker_id=stopping)
    time.sleep(1.5)
    assert farm.processes["stopping"].poll() is None, "the worker left before its task ended"
    assert running_on(farm, job) == stopping
    release.touch()
    assert farm.wait_for_job(job["id"])["state"] == "done"
    farm.wait_for(lambda: farm.processes["stopping"].poll() is not None, 20,
                  "the stopped worker to exit")
    assert farm.processes["stopping"].returncode == 0
    assert worker_entry(farm, stopping)["state"] == "left"


def test_stop_now_hands_the_task_back_uncharged_and_another_worker_runs_it(
        farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=0)
    stopping = farm.start_worker(name="stopping")
    started = tmp_path / "started"  # the first attempt sleeps; the next one ends at once
    job = farm.submit([{"command": ["sh", "-c", f"[ -e {started} ] && exit 0; touch {started}; "
                                                "exec sleep 60"]}], retry={"max_attempts": 1})
    farm.wait_for(lambda: running_on(farm, job) == stopping and started.exists(), 20,
                  "the task to run")
    other = farm.start_worker(name="other")

    wrangler(farm).set_worker_wanted_state(state="stop", worker_id=stopping, now=True)
    assert farm.wait_for_job(job["id"])["state"] == "done"
    task = task_of(farm, job)
    assert task["failures"] == 0
    assert [(a["worker_id"], a["state"]) for a in task["attempts"]] == [
        (stopping, "handed_back"), (other, "done")]
    farm.wait_for(lambda: farm.processes["stopping"].poll() is not None, 20,
                  "the stopped worker to exit")
    assert farm.processes["stopping"].returncode == 0


def test_a_viewer_may_not_drain_a_worker(farm: Farm) -> None:
    farm.start(workers=1)
    (worker,) = farm.rpc.registry.list_workers(alive=True)
    viewer = farm.client(farm.token_for("vic", Role.VIEWER)).registry
    with pytest.raises(PermissionDenied):
        viewer.set_worker_wanted_state(state="drain", worker_id=worker["worker_id"])
    assert worker_entry(farm, worker["worker_id"])["wanted"] == "active"


def test_the_cli_disables_and_enables_a_worker_and_lists_what_is_wanted(farm: Farm) -> None:
    from tests.integration.test_cli_and_pipeline import corral

    farm.start(workers=1)
    (worker,) = farm.rpc.registry.list_workers(alive=True)
    done = corral(farm, "worker", "disable", worker["worker_id"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workers"] == {worker["worker_id"]: "disable"}
    listed = json.loads(corral(farm, "workers", "--json").stdout)
    assert [(w["worker_id"], w["wanted"]) for w in listed] == [(worker["worker_id"], "disable")]
    table = corral(farm, "workers").stdout
    assert "disable" in table and worker["name"] in table

    refused = corral(farm, "worker", "drain", "--host", "h", "--pool", "cpu")
    assert refused.returncode == 1 and "exactly one" in refused.stderr
    done = corral(farm, "worker", "enable", worker["worker_id"])
    assert done.returncode == 0 and "active" in done.stdout
