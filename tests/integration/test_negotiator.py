"""The resource negotiator on the real broker: ended attempts and lost workers give their resources
back, and a negotiator killed with SIGKILL comes back holding exactly what it had promised."""

import signal
from typing import Any

from tests.farm import Farm

GB = 1024


def start(farm: Farm) -> Any:
    farm.start_service("registry")
    farm.start_service("resource_negotiator")
    negotiator = farm.rpc.resource_negotiator
    negotiator.report_host("render01", 32, 64 * GB, [], {})
    return negotiator


def amounts(cores: float, memory_mb: int) -> dict[str, Any]:
    return {"cores": cores, "memory_mb": memory_mb, "gpus": 0, "custom": {}}


def test_reservations_of_a_lost_worker_then_of_one_that_leaves_are_freed(farm: Farm) -> None:
    negotiator = start(farm)
    registry = farm.rpc.registry
    registry.register_worker("doomed", "render01", "cpu", ["normal"], None)
    registry.register_worker("keeper", "render01", "cpu", ["normal"], None)
    assert negotiator.reserve("task-1-attempt-1", "render01", "doomed", 1, 1,
                              {"cores": 8, "memory_mb": 16 * GB}) is not None
    assert negotiator.reserve("task-2-attempt-1", "render01", "keeper", 2, 1,
                              {"cores": 20, "memory_mb": 40 * GB}) is not None
    assert negotiator.free("render01") == amounts(4, 8 * GB)

    def keeper_alive_and_doomed_freed() -> bool:
        # Only the keeper keeps sending heartbeats: the registry gives up on the doomed one.
        registry.worker_heartbeat("keeper", "busy", 2)
        return negotiator.free("render01") == amounts(12, 24 * GB)

    farm.wait_for(keeper_alive_and_doomed_freed, 20, "the lost worker's reservation to be freed")
    states = {w["worker_id"]: w["state"] for w in registry.list_workers()}
    assert states == {"doomed": "lost", "keeper": "busy"}
    (host,) = negotiator.list_hosts()
    assert [r["id"] for r in host["reservations"]] == ["task-2-attempt-1"]

    registry.leave_worker("keeper")
    farm.wait_for(lambda: negotiator.free("render01") == amounts(32, 64 * GB), 20,
                  "the reservation of the worker that left to be freed")


def claim_one_task(farm: Farm, worker_id: str) -> dict[str, Any]:
    """Submit one task and claim it as a worker registered by hand; the claim's reply."""
    farm.start_service("scheduler")
    farm.rpc.registry.register_worker(worker_id, "render01", "cpu", ["normal"], None)
    job = farm.submit([{"command": ["true"]}])
    (task,) = farm.rpc.scheduler.get_job(job["id"])["tasks"]

    def dispatched() -> bool:
        farm.rpc.registry.worker_heartbeat(worker_id, "idle")  # never silent long enough to be lost
        return farm.rpc.scheduler.get_task(task["id"])["state"] == "dispatched"

    farm.wait_for(dispatched, 20, "the task to be dispatched")
    attempt = farm.rpc.scheduler.get_task(task["id"])["attempt"]
    claimed = farm.rpc.scheduler.claim_task(task["id"], attempt, worker_id, "render01")
    assert claimed["status"] == "claimed"
    return claimed


def test_reservation_of_a_finished_attempt_is_freed(farm: Farm) -> None:
    negotiator = start(farm)
    claimed = claim_one_task(farm, "w1")
    task_id, attempt = claimed["task_id"], claimed["attempt"]
    assert negotiator.reserve(f"task-{task_id}-attempt-{attempt}", "render01", "w1", task_id,
                              attempt, {"cores": 8, "memory_mb": 16 * GB}) is not None
    farm.rpc.scheduler.finish_task(task_id, claimed["lease_token"], 0)

    def freed() -> bool:
        farm.rpc.registry.worker_heartbeat("w1", "idle")
        return negotiator.free("render01") == amounts(32, 64 * GB)

    farm.wait_for(freed, 20, "the finished attempt's reservation to be freed")
    assert {w["worker_id"]: w["state"] for w in farm.rpc.registry.list_workers()} == {"w1": "idle"}


def test_requeued_task_frees_its_old_attempt_and_keeps_the_new_ones(farm: Farm) -> None:
    negotiator = start(farm)
    claimed = claim_one_task(farm, "w1")
    task_id, old = claimed["task_id"], claimed["attempt"]
    negotiator.reserve("old", "render01", "w1", task_id, old, {"cores": 8, "memory_mb": 16 * GB})
    # As if another worker had already claimed the next attempt when the cancel event arrives.
    negotiator.reserve("new", "render01", "w2", task_id, old + 1,
                       {"cores": 4, "memory_mb": 4 * GB})
    farm.rpc.scheduler.requeue_task(task_id)  # sends task_cancelled, then runs a new attempt

    def old_freed() -> bool:
        farm.rpc.registry.worker_heartbeat("w1", "idle")
        return negotiator.free("render01") == amounts(28, 60 * GB)

    farm.wait_for(old_freed, 20, "the old attempt's reservation to be freed")
    (host,) = negotiator.list_hosts()
    assert [r["id"] for r in host["reservations"]] == ["new"]


def test_killed_negotiator_restarts_with_every_reservation_and_books_nothing_twice(
        farm: Farm) -> None:
    negotiator = start(farm)
    first = negotiator.reserve("task-1-attempt-1", "render01", "w1", 1, 1,
                               {"cores": 8, "memory_mb": 16 * GB})
    negotiator.reserve("task-2-attempt-1", "render01", "w2", 2, 1,
                       {"cores": 20, "memory_mb": 40 * GB})
    before = negotiator.list_hosts()
    assert before[0]["free"] == amounts(4, 8 * GB)

    farm.kill("resource_negotiator", signal.SIGKILL)
    # Asked while it is down: the request waits in its queue for the restarted negotiator.
    retried = negotiator.reserve.call_async("task-1-attempt-1", "render01", "w1", 1, 1,
                                            {"cores": 8, "memory_mb": 16 * GB})
    too_big = negotiator.reserve.call_async("task-3-attempt-1", "render01", "w3", 3, 1,
                                            {"cores": 8, "memory_mb": 8 * GB})
    farm.start_service("resource_negotiator")

    assert retried.result() == first
    assert too_big.result() is None
    assert negotiator.list_hosts() == before
    assert negotiator.free("render01") == amounts(4, 8 * GB)
