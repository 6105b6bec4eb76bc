"""Job control and fairness with real workers: pause, resume, cancel, retry, reprioritise."""

import time
from pathlib import Path

from tests.farm import Farm, pid_alive


def running_count(farm: Farm, job_id: int) -> int:
    return farm.rpc.scheduler.get_job(job_id, task_limit=0)["counts"].get("running", 0)


def test_cancel_kills_the_process_within_a_second(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=1)
    pid_file = tmp_path / "pid"
    job = farm.submit([{"command": ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"]}])
    farm.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 20,
                  "the payload to start")
    pid = int(pid_file.read_text())
    farm.rpc.scheduler.cancel_job(job["id"])
    cancelled_at = time.monotonic()
    while pid_alive(pid) and time.monotonic() - cancelled_at < 1.0:
        time.sleep(0.02)
    assert not pid_alive(pid), "the payload outlived its cancel by a second"


def test_pause_lets_the_running_task_finish_and_resume_runs_the_rest(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["sleep", "1"]} for _ in range(3)])
    farm.wait_for(lambda: running_count(farm, job["id"]) == 1, 20, "the first task to run")
    farm.rpc.scheduler.pause_job(job["id"])
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"], task_limit=0)["counts"] ==
                  {"done": 1, "paused": 2}, 20, "the running task to finish and the rest to wait")
    time.sleep(1.5)  # a worker is idle, yet nothing of the paused job starts
    assert farm.rpc.scheduler.get_job(job["id"], task_limit=0)["counts"] == \
        {"done": 1, "paused": 2}
    farm.rpc.scheduler.resume_job(job["id"])
    assert farm.wait_for_job(job["id"])["counts"] == {"done": 3}


def test_pause_with_kill_stops_the_running_task_uncharged(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["sleep", "30"]}], retry={"max_attempts": 1})
    farm.wait_for(lambda: running_count(farm, job["id"]) == 1, 20, "the task to run")
    farm.rpc.scheduler.pause_job(job["id"], kill=True)
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    task = farm.rpc.scheduler.get_task(task_id)
    assert task["state"] == "paused" and task["failures"] == 0
    farm.wait_for(lambda: farm.rpc.registry.list_workers(alive=True)[0]["state"] == "idle", 10,
                  "the worker to be free again")


def test_failed_task_is_retried_on_request(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=1)
    flag = tmp_path / "fixed"
    job = farm.submit([{"command": ["sh", "-c", f"test -e {flag}"]}])
    assert farm.wait_for_job(job["id"])["state"] == "failed"
    flag.touch()  # the artist fixes the scene
    assert farm.rpc.scheduler.retry_job(job["id"])["retried_tasks"] == 1
    assert farm.wait_for_job(job["id"])["state"] == "done"


def test_reprioritised_job_runs_before_older_work(farm: Farm) -> None:
    farm.start(workers=1)
    blocker = farm.submit([{"command": ["sleep", "1"]}], name="blocker")
    farm.wait_for(lambda: running_count(farm, blocker["id"]) == 1, 20, "the blocker to run")
    older = farm.submit([{"command": ["true"]}], name="older", priority=50)
    urgent = farm.submit([{"command": ["true"]}], name="urgent", priority=20)
    farm.rpc.scheduler.set_priority(urgent["id"], 900)
    done_older, done_urgent = farm.wait_for_job(older["id"]), farm.wait_for_job(urgent["id"])
    started = {name: farm.rpc.scheduler.get_task(job["tasks"][0]["id"])["attempts"][0]
               ["process_started_at"] for name, job in [("older", done_older),
                                                        ("urgent", done_urgent)]}
    assert started["urgent"] < started["older"]


def test_fairness_next_task_comes_from_the_user_with_fewest_running(farm: Farm) -> None:
    farm.start(workers=1)
    ana = farm.submit([{"command": ["sleep", "2"]}] + [{"command": ["sleep", "0.2"]}] * 9,
                      user="ana")
    farm.wait_for(lambda: running_count(farm, ana["id"]) == 1, 20, "ana's first task to run")
    ben = farm.submit([{"command": ["true"]}], user="ben")
    ben_done = farm.wait_for_job(ben["id"], timeout=30)
    farm.wait_for_job(ana["id"], timeout=30)
    ben_started = farm.rpc.scheduler.get_task(ben_done["tasks"][0]["id"])["attempts"][0][
        "process_started_at"]
    ana_starts = sorted(farm.rpc.scheduler.get_task(t["id"])["attempts"][0]["process_started_at"]
                        for t in farm.rpc.scheduler.get_job(ana["id"])["tasks"])
    # Ben's one task ran right after Ana's first, before her other nine queued tasks.
    assert ana_starts[0] < ben_started < ana_starts[1]
