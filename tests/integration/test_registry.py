"""The registry on the real broker: workers join, are lost when killed, and the farm overview."""

import signal

from tests.farm import Farm


def test_killed_worker_is_reported_lost_and_overview_counts_it(farm: Farm) -> None:
    farm.start(workers=0)
    keeper = farm.start_worker(name="keeper")
    doomed = farm.start_worker(name="doomed")
    farm.kill("doomed", signal.SIGKILL)
    farm.wait_for(lambda: {w["worker_id"]: w["state"]
                           for w in farm.rpc.registry.list_workers()}.get(doomed) == "lost",
                  15, "the killed worker to be marked lost")
    overview = farm.rpc.registry.farm_overview()
    assert overview["workers"] == {"idle": 1, "lost": 1}
    queues = {q["queue"]: q for q in overview["queues"]}
    assert sorted(queues) == ["corral.cpu.high", "corral.cpu.low", "corral.cpu.normal"]
    assert queues["corral.cpu.normal"]["consumers"] == 1  # only the survivor consumes
    assert {s["service"] for s in overview["services"] if s["alive"]} >= {"registry"}
    assert [w["worker_id"] for w in farm.rpc.registry.list_workers(alive=True)] == [keeper]


def test_queue_depth_shows_waiting_work_only_up_to_idle_capacity(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["sleep", "3"]} for _ in range(5)])
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"], task_limit=0)["counts"]
                  .get("running") == 1, 20, "one task to run")
    # The one worker is busy: nothing is published ahead of it, the rest wait in the database.
    queues = {q["queue"]: q for q in farm.rpc.registry.farm_overview()["queues"]}
    assert queues["corral.cpu.normal"]["messages"] == 0
    assert farm.rpc.scheduler.get_job(job["id"], task_limit=0)["counts"] == \
        {"running": 1, "queued": 4}
