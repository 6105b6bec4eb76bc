"""A worker that cannot renew its lease kills its payload before the task may run elsewhere."""

import signal
import time
from pathlib import Path

from tests.farm import Farm


def ticking_task(ledger: Path, seconds: float) -> dict:
    """A task that writes `attempt time` to the ledger ten times a second while it runs."""
    ticks = int(seconds * 10)
    return {"command": [f'for i in $(seq {ticks}); do echo "$CORRAL_ATTEMPT $(date +%s.%N)" '
                        f">> {ledger}; sleep 0.1; done"], "shell": True}


def ticks_by_attempt(ledger: Path) -> dict[int, list[float]]:
    ticks: dict[int, list[float]] = {}
    for line in ledger.read_text().splitlines():
        attempt, at = line.split()
        ticks.setdefault(int(attempt), []).append(float(at))
    return ticks


def test_stopped_worker_payload_dies_before_its_task_runs_again(farm: Farm,
                                                                tmp_path: Path) -> None:
    farm.start(workers=0)
    farm.start_worker(name="stopped")
    ledger = tmp_path / "ledger"
    job = farm.submit([ticking_task(ledger, 8)])
    farm.wait_for(lambda: ledger.exists() and ledger.read_text(), 30, "the payload to tick")
    farm.start_worker(name="other")
    farm.processes["stopped"].send_signal(signal.SIGSTOP)
    try:
        # Past the lease (3 s): the scheduler gives the task to the other worker meanwhile.
        farm.wait_for(lambda: 2 in ticks_by_attempt(ledger), 30, "the task to run again")
        time.sleep(1)
    finally:
        farm.processes["stopped"].send_signal(signal.SIGCONT)
    done = farm.wait_for_job(job["id"], timeout=60)
    assert done["state"] == "done"
    ticks = ticks_by_attempt(ledger)
    assert max(ticks[1]) < min(ticks[2]), "the first attempt ran on after the second started"
