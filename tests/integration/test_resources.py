"""Resources a task asks for, on real workers: its memory is watched and its request grows."""

import itertools
import json
import time
from pathlib import Path

from kombu import Connection

from services.resource_negotiator import store as negotiator
from services.resource_negotiator.store import NegotiatorTable
from shared.db import Store, create_db_engine
from shared.resources import Resources
from tests.farm import Farm, host_free, wait_until

ALLOCATE = ("import os, time; block = bytearray(150 * 1024 * 1024); "
            "print(os.environ['CORRAL_MEMORY_MB'], os.environ['CORRAL_CORES']); time.sleep(1)")


def test_task_over_its_memory_is_killed_then_retried_with_more(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["python3", "-c", ALLOCATE]}],
                      resources={"cores": 2, "memory": "100M"},
                      retry={"max_attempts": 2, "memory_factor": 2})
    done = farm.wait_for_job(job["id"], timeout=60)
    task = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])
    first, second = task["attempts"]
    assert first["state"] == "failed"
    assert first["reason"].startswith("out of memory (peak ")
    assert first["reason"].endswith("limit 100 MB)")
    assert second["state"] == "done" and second["peak_memory_mb"] >= 150
    assert task["resources"]["memory_mb"] == 200
    assert open(task["log_path"]).read().split()[:2] == ["200", "2"]
    # The worker killed only its payload: it is still here, idle.
    (worker,) = farm.rpc.registry.list_workers(alive=True)
    assert worker["state"] in ("idle", "busy")


def start_with_negotiator(farm: Farm) -> None:
    farm.start_service("registry")
    farm.start_service("scheduler")
    farm.start_service("resource_negotiator")


def recorded(ledger: Path, seconds: float) -> list[str]:
    """A task that notes its own start and end in the ledger."""
    return ["sh", "-c", f'echo "$CORRAL_TASK_ID start $(date +%s.%N)" >> {ledger}; '
                        f'sleep {seconds}; echo "$CORRAL_TASK_ID end $(date +%s.%N)" >> {ledger}']


def assert_never_at_once(ledger: Path) -> None:
    spans: dict[str, list[float]] = {}
    for line in ledger.read_text().splitlines():
        task, _, moment = line.split()
        spans.setdefault(task, []).append(float(moment))
    ordered = sorted((start, end) for start, end in spans.values())
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert end <= start, f"two tasks ran at once: {ordered}"


def test_lifeblood_example_workers_share_one_host_without_overspending(farm: Farm,
                                                                       tmp_path: Path) -> None:
    start_with_negotiator(farm)
    for name in ("worker1", "worker2", "worker3"):
        farm.start_worker("--cores", "32", "--memory", "64G", name=name)
    farm.wait_for(lambda: host_free(farm) == (32, 65536), 20, "the host to report 32 cores / 64G")
    first = farm.submit([{"command": wait_until(tmp_path / "one")}],
                        resources={"cores": 8, "memory": "16G"})
    farm.wait_for(lambda: host_free(farm) == (24, 49152), 20, "24 cores / 48G free")
    second = farm.submit([{"command": wait_until(tmp_path / "two")}],
                         resources={"cores": 20, "memory": "40G"})
    farm.wait_for(lambda: host_free(farm) == (4, 8192), 20, "4 cores / 8G free")
    (tmp_path / "one").touch()
    farm.wait_for_job(first["id"])
    farm.wait_for(lambda: host_free(farm) == (12, 24576), 20, "12 cores / 24G free")
    (tmp_path / "two").touch()
    farm.wait_for_job(second["id"])
    farm.wait_for(lambda: host_free(farm) == (32, 65536), 20, "the whole host free again")


def test_tasks_that_do_not_fit_together_never_run_at_once(farm: Farm, tmp_path: Path) -> None:
    start_with_negotiator(farm)
    for name in ("worker1", "worker2"):
        farm.start_worker("--cores", "4", "--memory", "8G", name=name)
    ledger = tmp_path / "ledger"
    job = farm.submit([{"command": recorded(ledger, 1.5)}] * 2,
                      resources={"cores": 3, "memory": "1G"})
    done = farm.wait_for_job(job["id"], timeout=60)
    assert done["counts"] == {"done": 2}
    assert_never_at_once(ledger)  # 3 + 3 cores do not fit in 4
    assert all(farm.rpc.scheduler.get_task(t["id"])["failures"] == 0 for t in done["tasks"])


def test_worker_hands_a_task_back_uncharged_when_the_negotiator_refuses(farm: Farm) -> None:
    start_with_negotiator(farm)
    farm.start_worker("--cores", "4", "--memory", "8G", name="worker1")
    farm.wait_for(lambda: host_free(farm) == (4, 8192), 20, "the host to report")
    # Book the host behind the scheduler's back (no event), so its view of the host is stale
    # and only the negotiator's own check stands between the task and an overbooked host.
    store = Store(create_db_engine(f"sqlite:///{farm.directory / 'data' / 'negotiator.db'}"),
                  NegotiatorTable.metadata)
    (host,) = farm.rpc.resource_negotiator.list_hosts()
    assert negotiator.reserve(store, "by hand", host["host"], "someone", 0, 0,
                              Resources(cores=4, memory_mb=1024)) is not None
    job = farm.submit([{"command": ["true"]}], resources={"cores": 2, "memory": "1G"})
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    task = farm.wait_for(lambda: (lambda t: t if t["attempts"] and t["attempts"][0]["state"]
                                  != "running" else None)(farm.rpc.scheduler.get_task(task_id)),
                         20, "the worker to try the task and give it back")
    first = task["attempts"][0]
    assert first["state"] == "handed_back"
    assert first["reason"].startswith(f"no room on {host['host']} for 2 cores")
    assert task["failures"] == 0
    negotiator.release(store, "by hand")
    store.dispose()
    farm.rpc.resource_negotiator.report_host(host["host"], 4, 8192)  # tell everyone it is free
    assert farm.wait_for_job(job["id"], timeout=30)["state"] == "done"


def test_duplicate_delivery_books_and_gives_back_only_its_own_reservation(farm: Farm,
                                                                         tmp_path: Path) -> None:
    """The message says what to book, so a worker books while its claim is on the way; a
    worker whose claim turns out stale gives its booking back and leaves the runner's alone."""
    start_with_negotiator(farm)
    farm.start_worker("--cores", "8", "--memory", "8G", name="runner")
    farm.wait_for(lambda: host_free(farm) == (8, 8192), 20, "the host to report")
    job = farm.submit([{"command": wait_until(tmp_path / "stop")}],
                      resources={"cores": 3, "memory": "1G"})
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    farm.wait_for(lambda: farm.rpc.scheduler.get_task(task_id)["state"] == "running", 20,
                  "the task to start")
    assert host_free(farm) == (5, 7168)
    (runner,) = farm.rpc.resource_negotiator.list_hosts()[0]["reservations"]
    farm.start_worker("--cores", "8", "--memory", "8G", name="late")
    with Connection(farm.amqp_uri) as connection:  # the same message, delivered again
        connection.Producer().publish(
            json.dumps({"task_id": task_id, "attempt": 1,
                        "resources": {"cores": 3, "memory_mb": 1024, "gpus": 0, "custom": {}}}),
            routing_key="corral.cpu.normal", content_type="application/json")
    late_log = farm.directory / "late.log"
    farm.wait_for(lambda: "the claim was refused" in late_log.read_text(), 20,
                  "the late worker to book and give the booking back")
    assert host_free(farm) == (5, 7168)
    assert farm.rpc.resource_negotiator.list_hosts()[0]["reservations"] == [runner]
    assert len(farm.rpc.scheduler.get_task(task_id)["attempts"]) == 1
    (tmp_path / "stop").touch()
    assert farm.wait_for_job(job["id"])["state"] == "done"
    farm.wait_for(lambda: host_free(farm) == (8, 8192), 20, "the host free again")


def test_two_one_gpu_tasks_on_one_host_are_pinned_to_different_gpus(farm: Farm,
                                                                    tmp_path: Path) -> None:
    start_with_negotiator(farm)
    for name in ("worker1", "worker2"):
        farm.start_worker("--gpus", "2", name=name)
    # Each task waits until both run, so they hold their GPUs at once however loaded the
    # machine is (a sleep let the first end before the second started, both on GPU 0).
    started = tmp_path / "started"
    started.mkdir()
    both_running = (f'echo "gpu=$CUDA_VISIBLE_DEVICES"; touch {started}/$$; '
                    f'while [ "$(ls {started} | wc -l)" -lt 2 ]; do sleep 0.1; done')
    job = farm.submit([{"command": ["sh", "-c", both_running]}] * 2,
                      resources={"cores": 1, "gpus": 1})
    done = farm.wait_for_job(job["id"], timeout=60)
    seen = sorted(Path(farm.rpc.scheduler.get_task(t["id"])["log_path"]).read_text().split()[0]
                  for t in done["tasks"])
    assert seen == ["gpu=0", "gpu=1"]


def test_killed_worker_reservation_is_freed(farm: Farm, tmp_path: Path) -> None:
    start_with_negotiator(farm)
    farm.start_worker("--cores", "8", "--memory", "8G", name="doomed")
    farm.submit([{"command": wait_until(tmp_path / "never")}], resources={"cores": 6})
    farm.wait_for(lambda: (host_free(farm) or (0, 0))[0] == 2, 20, "the reservation to be made")
    farm.kill("doomed")
    farm.wait_for(lambda: (host_free(farm) or (0, 0))[0] == 8, 30,
                  "the lost worker's reservation to be freed")


def test_task_too_big_for_every_host_waits_visibly_and_blocks_nothing(farm: Farm) -> None:
    start_with_negotiator(farm)
    farm.start_worker("--cores", "8", "--memory", "16G", name="worker1")
    farm.wait_for(lambda: host_free(farm) == (8, 16384), 20, "the host to report")
    huge = farm.submit([{"command": ["true"]}], resources={"cores": 2, "memory": "128G"})
    small = farm.submit([{"command": ["true"]}], resources={"cores": 1, "memory": "1G"})
    assert farm.wait_for_job(small["id"])["state"] == "done"
    huge_task = farm.rpc.scheduler.get_job(huge["id"])["tasks"][0]["id"]
    why = farm.wait_for(lambda: (lambda w: w if w["code"] == "no_host_fits" else None)(
        farm.rpc.scheduler.why_task(huge_task)), 10, "the scheduler to say why")
    assert why["reason"] == "no host with >= 2 cores / 128 GB serves pool cpu"
    assert farm.rpc.scheduler.get_task(huge_task)["attempts"] == []  # never sent anywhere


def test_negotiator_killed_and_restarted_mid_run_never_overbooks(farm: Farm,
                                                                 tmp_path: Path) -> None:
    start_with_negotiator(farm)
    for name in ("worker1", "worker2"):
        farm.start_worker("--cores", "4", "--memory", "8G", name=name)
    farm.wait_for(lambda: host_free(farm) == (4, 8192), 20, "the host to report")
    ledger = tmp_path / "ledger"
    job = farm.submit([{"command": recorded(ledger, 0.7)}] * 4,
                      resources={"cores": 3, "memory": "1G"})
    farm.wait_for(lambda: ledger.exists(), 20, "the first task to start")
    farm.kill("resource_negotiator")
    time.sleep(2)
    farm.start_service("resource_negotiator")
    done = farm.wait_for_job(job["id"], timeout=90)
    assert done["counts"] == {"done": 4}
    assert_never_at_once(ledger)
    farm.wait_for(lambda: host_free(farm) == (4, 8192), 20, "every reservation to be released")


def test_payloads_run_at_the_nice_level_of_their_band(farm: Farm) -> None:
    farm.start(workers=0)
    farm.start_worker("--nice", "low=15,normal=5", name="worker1")
    report = ["sh", "-c", "cut -d' ' -f19 /proc/$$/stat"]
    low = farm.submit([{"command": report}], priority=5)
    normal = farm.submit([{"command": report}], priority=50)
    high = farm.submit([{"command": report}], priority=500)
    levels = [Path(farm.rpc.scheduler.get_task(farm.wait_for_job(job["id"])["tasks"][0]["id"])
                   ["log_path"]).read_text().strip() for job in (low, normal, high)]
    assert levels == ["15", "5", "0"]
