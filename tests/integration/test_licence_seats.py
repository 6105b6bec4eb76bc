"""Per-host licence seats and seats held by a worker for its life, on real workers and services.

One machine stands in for several hosts: each worker claims a host name of its own (`--host`) and
serves a pool of its own, so a task lands on the host the test means.
"""

import signal
from pathlib import Path
from typing import Any

from tests.farm import Farm


def start_farm(farm: Farm) -> None:
    farm.start(workers=0)
    farm.start_service("license")


def on_host(farm: Farm, host: str, *extra: str) -> str:
    return farm.start_worker("--host", host, "--pool", host, *extra, name=f"{host}-{farm._counter}")


def pool(farm: Farm, name: str) -> dict[str, Any]:
    return dict(farm.rpc.license.get_pool(name))


def running_task(farm: Farm, host: str, tmp_path: Path, licences: dict[str, int]) -> int:
    """Submit a task to `host`'s pool that runs until the test ends; its id once it runs."""
    job = farm.submit([{"command": ["sleep", "60"], "pool": host}], licences=licences)
    task_id = int(farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"])
    farm.wait_for(lambda: farm.rpc.scheduler.get_task(task_id)["state"] == "running", 30,
                  f"task {task_id} to run on {host}")
    return task_id


def test_tasks_on_one_host_share_a_per_host_seat_and_another_host_needs_a_second(
        farm: Farm, tmp_path: Path) -> None:
    start_farm(farm)
    farm.rpc.license.set_pool("redshift", 2, True)
    on_host(farm, "node-a")
    on_host(farm, "node-a")
    on_host(farm, "node-b")
    on_host(farm, "node-c")
    needs = {"redshift": 1}

    first = running_task(farm, "node-a", tmp_path, needs)
    farm.wait_for(lambda: pool(farm, "redshift")["in_use"] == 1, 10, "node-a's seat")
    running_task(farm, "node-b", tmp_path, needs)
    farm.wait_for(lambda: pool(farm, "redshift")["free"] == 0, 10, "node-b's seat")
    # Nothing is free, yet a second task on node-a runs on the seat node-a holds.
    second = running_task(farm, "node-a", tmp_path, needs)
    seats = pool(farm, "redshift")
    assert (seats["in_use"], seats["free"], seats["hosts"]) == (2, 0, ["node-a", "node-b"])
    assert len(seats["holders"]) == 3
    tasks = [farm.rpc.scheduler.get_task(t) for t in (first, second)]
    assert [t["host"] for t in tasks] == ["node-a", "node-a"]

    # node-c has no seat and none is left: its task is handed back, uncharged, and waits.
    job = farm.submit([{"command": ["true"], "pool": "node-c"}], licences=needs)
    third = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    task = farm.wait_for(lambda: (lambda t: t if any(a["state"] == "handed_back"
                                                     for a in t["attempts"]) else None)(
        farm.rpc.scheduler.get_task(third)), 30, "node-c's task to find no seat")
    assert task["attempts"][0]["reason"] == "licences not free: 1 redshift"
    assert task["failures"] == 0
    assert pool(farm, "redshift")["in_use"] == 2

    # node-a keeps its seat while its other task runs; once node-b's task ends, node-c takes its seat.
    farm.rpc.scheduler.cancel_job(farm.rpc.scheduler.get_task(first)["job_id"])
    assert pool(farm, "redshift")["hosts"] == ["node-a", "node-b"]  # node-a's other task holds
    node_b = next(j for j in farm.rpc.scheduler.list_jobs()["jobs"]
                  if farm.rpc.scheduler.get_job(j["id"])["tasks"][0]["pool"] == "node-b")
    farm.rpc.scheduler.cancel_job(node_b["id"])
    assert farm.wait_for_job(job["id"], timeout=60)["state"] == "done"


def test_a_seat_held_for_a_workers_life_covers_its_tasks_and_returns_when_it_is_killed(
        farm: Farm, tmp_path: Path) -> None:
    start_farm(farm)
    farm.rpc.license.set_pool("pixyz", 1)
    holder = farm.start_worker("--pool", "pixyz", "--hold-licence", "pixyz", name="holder")
    farm.wait_for(lambda: [h["worker_id"] for h in pool(farm, "pixyz")["holders"]
                           if h["lifetime"]] == [holder], 20, "the holder's seat")
    waiting = farm.start_worker("--pool", "pixyz", "--hold-licence", "pixyz", name="waiting")

    # The only seat is held, yet a task needing it runs: on the holder, on the holder's seat.
    job = farm.submit([{"command": ["true"]}] * 2, pool="pixyz", licences={"pixyz": 1})
    assert farm.wait_for_job(job["id"], timeout=60)["counts"] == {"done": 2}
    for task in farm.rpc.scheduler.get_job(job["id"])["tasks"]:
        attempts = farm.rpc.scheduler.get_task(task["id"])["attempts"]
        assert [(a["state"], a["worker_id"]) for a in attempts] == [("done", holder)]
    assert pool(farm, "pixyz")["in_use"] == 1

    farm.kill("holder", signal.SIGKILL)
    # Once the registry gives the holder up (3 s here), its seat returns and the other takes it.
    farm.wait_for(lambda: [h["worker_id"] for h in pool(farm, "pixyz")["holders"]] == [waiting],
                  30, "the killed worker's seat to pass to the waiting worker")
    job = farm.submit([{"command": ["true"]}], pool="pixyz", licences={"pixyz": 1})
    done = farm.wait_for_job(job["id"], timeout=60)
    attempts = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])["attempts"]
    assert [(a["state"], a["worker_id"]) for a in attempts] == [("done", waiting)]


def test_a_seat_held_for_a_workers_life_returns_when_it_leaves(farm: Farm) -> None:
    start_farm(farm)
    farm.rpc.license.set_pool("pixyz", 1)
    holder = farm.start_worker("--pool", "pixyz", "--hold-licence", "pixyz", name="holder")
    farm.wait_for(lambda: pool(farm, "pixyz")["free"] == 0, 20, "the holder's seat")
    farm.kill("holder", signal.SIGTERM)
    farm.wait_for(lambda: pool(farm, "pixyz")["free"] == 1, 20, "the seat to come back")
    (gone,) = [w for w in farm.rpc.registry.list_workers() if w["worker_id"] == holder]
    assert gone["state"] == "left"  # it said goodbye: its seat did not wait for it to be lost
