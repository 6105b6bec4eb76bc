"""A payload's whole process tree ends with its attempt: worker killed, task cancelled, leftovers."""

import json
import signal
import socket
import time
from pathlib import Path

import psutil

from tests.farm import Farm


def spawning_task(pids: Path) -> dict:
    """A wrapper script that leaves a grandchild, a setsid child and a double-forked daemon."""
    script = (f"sleep 300 & echo $! >> {pids}; "
              f"setsid sleep 301 & echo $! >> {pids}; "
              f"( setsid sh -c 'sleep 302 & echo $! >> {pids}' & ); "
              "while true; do sleep 0.1; done")
    return {"command": [script], "shell": True}


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_tree(farm: Farm, pids: Path) -> list[int]:
    farm.wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= 3, 30,
                  "the payload to start its children")
    found = [int(pid) for pid in pids.read_text().split()]
    assert all(running(pid) for pid in found)
    return found


def assert_all_end_within(pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(running(pid) for pid in pids):
        time.sleep(0.05)
    assert [pid for pid in pids if running(pid)] == []


def test_killed_worker_takes_every_descendant_of_its_payload(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=0)
    farm.start_worker(name="doomed")
    pids = tmp_path / "pids"
    farm.submit([spawning_task(pids)])
    tree = started_tree(farm, pids)
    farm.kill("doomed", signal.SIGKILL)
    assert_all_end_within(tree, 2.0)


def test_cancel_kills_children_that_left_the_session(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=1)
    pids = tmp_path / "pids"
    job = farm.submit([spawning_task(pids)])
    tree = started_tree(farm, pids)
    farm.rpc.scheduler.cancel_job(job["id"])
    assert_all_end_within(tree, 2.0)


def test_restarted_worker_ends_what_a_lost_attempt_left_on_its_host(farm: Farm,
                                                                    tmp_path: Path) -> None:
    farm.start(workers=0)
    farm.start_worker(name="doomed")
    pids = tmp_path / "pids"
    farm.submit([spawning_task(pids)])
    tree = started_tree(farm, pids)
    attempts = tmp_path / "storage" / "hosts" / socket.gethostname() / "attempts"
    records = farm.wait_for(lambda: list(attempts.glob("*.json")), 10, "the attempt's record")
    assert len(records) == 1
    supervisor = json.loads(records[0].read_text())["supervisor_pid"]
    # Worker and supervisor die at once: nobody is left to clean up but the next worker.
    psutil.Process(supervisor).suspend()
    farm.kill("doomed", signal.SIGKILL)
    psutil.Process(supervisor).kill()
    time.sleep(0.5)
    farm.start_worker(name="next")
    assert_all_end_within(tree, 2.0)
    assert not records[0].exists()
