"""A worker pool on a real farm: it grows as work arrives, shrinks when idle, stops cleanly and
backs off from crashing workers."""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.farm import CONFIG, Farm, host_free, wait_until

StartPool = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_pool(farm: Farm) -> Iterator[StartPool]:
    """Starts `corral pool` the way the farm starts workers; stops it with SIGTERM afterwards,
    so no worker outlives its test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> subprocess.Popen[bytes]:
        process = farm._spawn("pool", [sys.executable, "-m", "services.cli", "pool", "--config",
                                       str(CONFIG), *options])
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def start_services(farm: Farm) -> None:
    farm.start_service("registry")
    farm.start_service("scheduler")
    farm.start_service("resource_negotiator")


def states(farm: Farm) -> list[str]:
    return sorted(w["state"] for w in farm.rpc.registry.list_workers(alive=True))


def pool_log(farm: Farm) -> str:
    return (farm.directory / "pool.log").read_text()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pool_starts_a_worker_each_time_the_last_idle_one_takes_a_task(
        farm: Farm, tmp_path: Path, start_pool: StartPool) -> None:
    # Lifeblood's worked example: one 32-core, 64G host, tasks of 8c/16G then 20c/40G.
    start_services(farm)
    start_pool("--host", "render-a", "--cores", "32", "--memory", "64G", "--max-workers", "3",
               "--min-idle", "1")
    farm.wait_for(lambda: host_free(farm) == (32, 65536), 30, "the pool to report 32 cores / 64G")
    farm.wait_for(lambda: states(farm) == ["idle"], 30, "one idle worker")

    first = farm.submit([{"command": wait_until(tmp_path / "one")}],
                        resources={"cores": 8, "memory": "16G"})
    farm.wait_for(lambda: host_free(farm) == (24, 49152), 20, "24 cores / 48G free")
    farm.wait_for(lambda: states(farm) == ["busy", "idle"], 20, "a second worker, idle")

    second = farm.submit([{"command": wait_until(tmp_path / "two")}],
                         resources={"cores": 20, "memory": "40G"})
    farm.wait_for(lambda: host_free(farm) == (4, 8192), 20, "4 cores / 8G free")
    farm.wait_for(lambda: states(farm) == ["busy", "busy", "idle"], 20, "a third worker, idle")

    (tmp_path / "one").touch()
    farm.wait_for_job(first["id"])
    farm.wait_for(lambda: host_free(farm) == (12, 24576), 20, "12 cores / 24G free")
    (tmp_path / "two").touch()
    farm.wait_for_job(second["id"])
    farm.wait_for(lambda: host_free(farm) == (32, 65536), 20, "the whole host free again")

    # Every worker stood for the pool's named host, not for the machine the test runs on.
    workers = farm.rpc.registry.list_workers(alive=True)
    assert len(workers) == 3  # never more than --max-workers
    assert {w["host"] for w in workers} == {"render-a"}
    assert [h["host"] for h in farm.rpc.resource_negotiator.list_hosts()] == ["render-a"]


def test_idle_extra_worker_is_stopped_after_the_idle_timeout(farm: Farm, tmp_path: Path,
                                                             start_pool: StartPool) -> None:
    start_services(farm)
    start_pool("--host", "render-b", "--cores", "8", "--memory", "8G", "--max-workers", "3",
               "--min-idle", "1", "--idle-timeout", "2")
    farm.wait_for(lambda: states(farm) == ["idle"], 30, "one idle worker")
    job = farm.submit([{"command": wait_until(tmp_path / "go")}], resources={"cores": 1})
    farm.wait_for(lambda: states(farm) == ["busy", "idle"], 20, "a second worker, idle")
    (tmp_path / "go").touch()
    farm.wait_for_job(job["id"])
    farm.wait_for(lambda: states(farm) == ["idle", "idle"], 20, "both workers idle")

    farm.wait_for(lambda: states(farm) == ["idle"], 20, "the idle extra to be stopped")

    assert "idle for more than 2s" in pool_log(farm)
    # A worker told to stop is not started again: min-idle still holds with the one left.
    time.sleep(3)
    everyone = farm.rpc.registry.list_workers(alive=False)
    assert sorted(w["state"] for w in everyone) == ["idle", "left"]  # it left, it was not lost


def test_sigterm_stops_every_worker_and_the_pool_exits_0(farm: Farm, tmp_path: Path,
                                                         start_pool: StartPool) -> None:
    start_services(farm)
    pool = start_pool("--host", "render-c", "--cores", "8", "--memory", "8G", "--max-workers",
                      "3", "--min-idle", "2", "--stop-grace", "1")
    farm.wait_for(lambda: states(farm) == ["idle", "idle"], 30, "two idle workers")
    job = farm.submit([{"command": wait_until(tmp_path / "never")}], resources={"cores": 1})
    farm.wait_for(lambda: states(farm) == ["busy", "idle", "idle"], 20, "three workers, one busy")
    pids = [w["pid"] for w in farm.rpc.registry.list_workers(alive=True)]

    pool.send_signal(signal.SIGTERM)

    assert pool.wait(60) == 0
    assert [pid for pid in pids if is_running(pid)] == []
    assert farm.rpc.registry.list_workers(alive=True) == []
    # The busy worker outlived the grace, so it handed its task back, uncharged.
    task = farm.rpc.scheduler.get_task(farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"])
    assert task["attempts"][0]["state"] == "handed_back"
    assert task["failures"] == 0


def _started_at(log: str) -> list[datetime]:
    return [datetime.strptime(match, "%Y-%m-%d %H:%M:%S,%f")
            for match in re.findall(r"^(\S+ \S+) INFO corral\.pool: started worker pid", log,
                                    re.MULTILINE)]


def test_crash_looping_workers_make_the_pool_back_off(farm: Farm,
                                                      start_pool: StartPool) -> None:
    start_services(farm)
    # A band the farm does not have: every worker exits with an error as soon as it starts.
    pool = start_pool("--host", "render-d", "--bands", "nosuchband", "--max-workers", "3")

    farm.wait_for(lambda: "backing off 4s" in pool_log(farm), 60, "a third quick exit")

    log = pool_log(farm)
    assert re.findall(r"backing off (\d+)s", log) == ["1", "2", "4"]
    starts = _started_at(log)
    assert len(starts) == 3  # one start per backoff, never a spin
    first, second, third = starts
    assert (second - first).total_seconds() >= 1 and (third - second).total_seconds() >= 2
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(30) == 0


def test_workers_that_ran_their_max_tasks_are_replaced_without_backoff(
        farm: Farm, start_pool: StartPool) -> None:
    """Pixyz's MAX_TASKS_BEFORE_SHUTDOWN: a worker leaves after N tasks, the pool starts afresh."""
    start_services(farm)
    start_pool("--host", "render-e", "--cores", "4", "--memory", "4G", "--max-workers", "1",
               "--max-tasks", "2")
    farm.wait_for(lambda: states(farm) == ["idle"], 30, "the first worker")
    job = farm.submit([{"command": ["true"]}] * 5)
    done = farm.wait_for_job(job["id"], timeout=60)
    assert done["counts"] == {"done": 5}
    ran_on = [farm.rpc.scheduler.get_task(t["id"])["attempts"][-1]["worker_id"]
              for t in done["tasks"]]
    # One worker at a time, two tasks each: the third worker ran the fifth task.
    assert [ran_on.count(w) for w in dict.fromkeys(ran_on)] == [2, 2, 1]
    log = pool_log(farm)
    assert log.count("left after its --max-tasks") == 2
    assert "backing off" not in log


def test_a_disabled_host_gets_no_new_worker_from_its_pool_and_takes_nothing(
        farm: Farm, start_pool: StartPool) -> None:
    start_services(farm)
    start_pool("--host", "render-h", "--cores", "8", "--memory", "8G", "--max-workers", "3",
               "--min-idle", "1")
    farm.wait_for(lambda: states(farm) == ["idle"], 30, "one idle worker")
    (worker,) = farm.rpc.registry.list_workers(alive=True)
    assert worker["name"] == "cpu-1"
    farm.rpc.registry.set_worker_wanted_state(state="disable", host="render-h")
    farm.wait_for(lambda: states(farm) == ["disabled"], 10, "the worker to be disabled")

    job = farm.submit([{"command": ["true"]}])
    time.sleep(3)  # six pool ticks: no idle worker, yet the pool starts none on a disabled host
    assert states(farm) == ["disabled"]
    assert farm.rpc.scheduler.get_job(job["id"], task_limit=0)["counts"] == {"queued": 1}
    assert "render-h is drained or disabled: starting no worker" in pool_log(farm)

    farm.rpc.registry.set_worker_wanted_state(state="enable", host="render-h")
    assert farm.wait_for_job(job["id"])["state"] == "done"
