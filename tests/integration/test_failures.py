"""A worker, a service or the broker dies mid-run: no task is lost, none completes twice."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from kombu import Connection

from tests.farm import CONFIG, ROOT, Farm, rabbitmqctl


def ledger_task(ledger: Path, seconds: float) -> dict:
    """A task that appends its id to the ledger when, and only when, it runs to completion."""
    return {"command": ["sh", "-c", f'sleep {seconds}; echo "$CORRAL_TASK_ID" >> {ledger}']}


def assert_each_completed_once(farm: Farm, job_id: int, ledger: Path) -> dict:
    job = farm.wait_for_job(job_id, timeout=180)
    assert job["state"] == "done", job["counts"]
    completed = Counter(int(line) for line in ledger.read_text().split())
    assert sorted(completed) == sorted(t["id"] for t in job["tasks"])
    assert max(completed.values()) == 1, completed.most_common(3)
    for summary in job["tasks"]:
        attempts = farm.rpc.scheduler.get_task(summary["id"])["attempts"]
        assert [a["state"] for a in attempts].count("done") == 1
    return job


def test_killed_worker_task_reruns_elsewhere_after_lease_expiry(farm: Farm,
                                                                tmp_path: Path) -> None:
    farm.start(workers=0)
    doomed = farm.start_worker(name="doomed")
    ledger = tmp_path / "ledger"
    job = farm.submit([ledger_task(ledger, 3)])
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"])["state"] == "running", 20,
                  "the task to start on the first worker")
    survivor = farm.start_worker(name="survivor")
    farm.kill("doomed", signal.SIGKILL)
    assert_each_completed_once(farm, job["id"], ledger)
    task = farm.rpc.scheduler.get_task(farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"])
    assert [(a["worker_id"], a["state"]) for a in task["attempts"]] == \
        [(doomed, "lost"), (survivor, "done")]
    assert task["failures"] == 0  # an infrastructure loss is not charged to the retry budget


def test_scheduler_killed_and_restarted_mid_run_loses_nothing(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=2)
    ledger = tmp_path / "ledger"
    job = farm.submit([ledger_task(ledger, 0.3) for _ in range(30)])
    farm.wait_for(lambda: len(ledger.read_text().split()) >= 5 if ledger.exists() else False,
                  60, "a few tasks to complete")
    farm.kill("scheduler", signal.SIGKILL)
    time.sleep(2)  # workers keep running, finish, and queue their reports
    farm.start_service("scheduler")
    assert_each_completed_once(farm, job["id"], ledger)


def test_broker_connections_closed_mid_run_every_task_completes_once(farm: Farm,
                                                                     tmp_path: Path) -> None:
    farm.start(workers=2)
    ledger = tmp_path / "ledger"
    job = farm.submit([ledger_task(ledger, 0.3) for _ in range(30)])
    farm.wait_for(lambda: len(ledger.read_text().split()) >= 5 if ledger.exists() else False,
                  60, "a few tasks to complete")
    rabbitmqctl("close_all_connections", "-p", farm.vhost, "test: broker connections lost")
    farm.reconnect()  # this test's own client was among the connections closed
    assert_each_completed_once(farm, job["id"], ledger)


def test_worker_asked_to_stop_finishes_its_task_first(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=0)
    farm.start_worker(name="leaving")
    ledger = tmp_path / "ledger"
    job = farm.submit([ledger_task(ledger, 2)])
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"])["state"] == "running", 20,
                  "the task to start")
    farm.kill("leaving", signal.SIGTERM)
    assert farm.processes["leaving"].returncode == 0
    assert_each_completed_once(farm, job["id"], ledger)
    assert farm.rpc.registry.list_workers(alive=True) == []


def test_worker_stopping_with_hand_back_requeues_its_task_uncharged(farm: Farm,
                                                                    tmp_path: Path) -> None:
    farm.start(workers=0)
    farm.start_worker("--on-stop", "hand-back", name="leaving")
    ledger = tmp_path / "ledger"
    job = farm.submit([ledger_task(ledger, 1)])
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"])["state"] == "running", 20,
                  "the task to start")
    farm.kill("leaving", signal.SIGTERM)
    assert farm.processes["leaving"].returncode == 0
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    task = farm.rpc.scheduler.get_task(task_id)
    assert task["state"] in ("queued", "dispatched") and not ledger.exists()
    assert [a["state"] for a in task["attempts"]] == ["handed_back"]
    assert task["failures"] == 0
    taker = farm.start_worker(name="taker")
    assert_each_completed_once(farm, job["id"], ledger)
    attempts = farm.rpc.scheduler.get_task(task_id)["attempts"]
    assert [(a["state"], a["worker_id"] == taker) for a in attempts] == \
        [("handed_back", False), ("done", True)]


def test_a_poison_finish_report_is_set_aside_and_the_next_one_still_applies(farm: Farm) -> None:
    farm.start(workers=1)
    poison = {"task_id": 1, "lease_token": "x", "exit_code": 0, "peak_memory_mb": {"rss": 1}}
    with Connection(farm.amqp_uri) as connection:
        connection.Producer().publish(json.dumps(poison), routing_key="corral.reports",
                                      content_type="application/json")
    farm.wait_for(lambda: farm.queue_counts().get("corral.reports.dead") == (1, 0), 20,
                  "the poison report to be set aside")
    assert farm.rpc.registry.farm_overview()["reports"] == {"waiting": 0, "dead": 1}
    status = subprocess.run([sys.executable, "-m", "services.cli", "status", "--config",
                             str(CONFIG)], env=farm.env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert "1 finish reports could not be applied" in status.stderr
    with Connection(farm.amqp_uri) as connection:
        message = connection.SimpleQueue("corral.reports.dead").get(timeout=5)
        kept = json.loads(message.body)
        message.ack()
    assert kept["report"] == poison
    assert kept["error"] == "malformed: peak_memory_mb must be int, not {'rss': 1}"
    assert farm.rpc.registry.farm_overview()["reports"] == {"waiting": 0, "dead": 0}
    # The scheduler is not stuck on it: real reports keep being applied.
    job = farm.submit([{"command": ["true"]}] * 3)
    assert farm.wait_for_job(job["id"])["counts"] == {"done": 3}
    assert farm.queue_counts()["corral.reports"] == (0, 0)


def test_a_copy_of_a_message_reaching_its_worker_after_the_run_starts_nothing(
        farm: Farm, tmp_path: Path) -> None:
    # One worker, so the copy can only reach the worker that ran the task. The scheduler is
    # frozen while the payload finishes, so the worker's finish report and its claim of the copy
    # both wait for it: the claim must not hand the finished attempt back to its worker.
    farm.start(workers=1)
    ledger = tmp_path / "ledger"
    job = farm.submit([ledger_task(ledger, 1.5)])
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    farm.wait_for(lambda: farm.rpc.scheduler.get_task(task_id)["state"] == "running", 30,
                  "the task to start")
    attempt = farm.rpc.scheduler.get_task(task_id)["attempt"]
    farm.processes["scheduler"].send_signal(signal.SIGSTOP)
    try:
        with Connection(farm.amqp_uri) as connection:
            connection.Producer().publish(json.dumps({"task_id": task_id, "attempt": attempt}),
                                          routing_key="corral.cpu.normal", delivery_mode=2,
                                          content_type="application/json")
        farm.wait_for(lambda: ledger.exists(), 30, "the payload to complete")
        time.sleep(1.0)  # the worker reports, takes work again, and asks to claim the copy
    finally:
        farm.processes["scheduler"].send_signal(signal.SIGCONT)
    assert_each_completed_once(farm, job["id"], ledger)
    time.sleep(2.5)  # a second run would complete in this time
    assert ledger.read_text().split() == [str(task_id)]
