"""A payload that ended while its worker could not report it (stopped, then woken or killed) is
done once: its end is reported late, by another worker of the host or by its own, and the task
does not run again."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.farm import Farm

# The payload's last act, before it ends with 0, is to stop its worker (the supervisor's parent),
# so the worker cannot read its end nor report it. Only attempt 1 does: a rerun would not.
STOPS_ITS_WORKER = """
import os, signal, sys
with open(f"/proc/{os.getppid()}/stat") as stat:
    worker = int(stat.read().rsplit(")", 1)[1].split()[1])
with open(sys.argv[1], "a") as ledger:
    ledger.write(f"{os.environ['CORRAL_ATTEMPT']} {worker}\\n")
if os.environ["CORRAL_ATTEMPT"] == "1":
    os.kill(worker, signal.SIGSTOP)
"""

PAST_THE_LEASE = 6.0
"""Farm lease 3 s, one more second's grace: by then the task would have run again."""


def run_the_stopping_task(farm: Farm, tmp_path: Path) -> tuple[Path, int, int]:
    ledger = tmp_path / "ledger"
    job = farm.submit([{"command": [sys.executable, "-c", STOPS_ITS_WORKER, str(ledger)]}],
                      retry={"max_attempts": 3})
    line = farm.wait_for(lambda: ledger.exists() and ledger.read_text(), 30, "the payload to run")
    return ledger, int(job["id"]), int(line.split()[1])


def assert_done_once(farm: Farm, ledger: Path, job_id: int) -> None:
    job = farm.wait_for_job(job_id, 30)
    task = farm.rpc.scheduler.get_task(job["tasks"][0]["id"])
    runs = ledger.read_text().splitlines()
    assert len(runs) == 1, f"the payload ran {len(runs)} times: {runs}"
    assert task["state"] == "done"
    assert [(a["number"], a["state"]) for a in task["attempts"]] == [(1, "done")]


@pytest.mark.parametrize("then", ["woken", "killed"])
def test_a_payload_that_ended_while_its_worker_was_stopped_is_done_once(
        farm: Farm, tmp_path: Path, then: str) -> None:
    farm.start(workers=2)  # two workers on one host: the other one reports for the stopped one
    ledger, job_id, worker_pid = run_the_stopping_task(farm, tmp_path)
    time.sleep(PAST_THE_LEASE)
    # Reported while its worker still sleeps: inside the lease, by the other worker.
    assert farm.rpc.scheduler.get_job(job_id)["state"] == "done"
    os.kill(worker_pid, signal.SIGCONT if then == "woken" else signal.SIGKILL)
    time.sleep(1)  # the woken worker's own report comes, and is answered as a repeat
    assert_done_once(farm, ledger, job_id)


def test_a_payload_that_ended_while_its_lone_worker_was_stopped_is_done_once(
        farm: Farm, tmp_path: Path) -> None:
    """No other worker on the host: the lease runs out, but the woken worker's report is still
    taken, since no other attempt has claimed the task meanwhile."""
    farm.start(workers=1)
    ledger, job_id, worker_pid = run_the_stopping_task(farm, tmp_path)
    time.sleep(PAST_THE_LEASE)
    task = farm.rpc.scheduler.get_task(farm.rpc.scheduler.get_job(job_id)["tasks"][0]["id"])
    assert task["attempts"][0]["state"] == "lost"  # the scheduler could not know better
    os.kill(worker_pid, signal.SIGCONT)
    assert_done_once(farm, ledger, job_id)
