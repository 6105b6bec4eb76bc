"""Two scheduler instances on one farm: kill -9 of the leader mid-burst; the standby takes over
within one lease and the ledger shows every task done exactly once.

The farm is the chaos suite's (its own RabbitMQ node, ledger payloads), with a second scheduler
and a leader lease of LEADER_LEASE seconds; on SQLite both instances share the one file, on
PostgreSQL the one database. Each instance has a name of its own, as on two machines: the dead
leader's lease must run out before the standby may act.
"""

import time
from pathlib import Path

import pytest

from services.scheduler.leadership import FENCE
from tests.chaos.harness import ChaosRun
from tests.rabbit import RabbitNode

pytestmark = pytest.mark.integration

LEADER_LEASE = 3.0
TAKEOVER_SLACK = 2.0
"""Beyond the lease and a renewal interval: the survivor's answer crossing the broker."""


def standby_leads(run: ChaosRun, killed: str) -> str | None:
    leader = run.leading_scheduler()
    return leader if leader not in (None, killed) else None


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_standby_takes_over_from_a_leader_killed_mid_burst_and_no_task_is_lost_or_run_twice(
        chaos_dir: Path, node: RabbitNode, seed: int, database: str,
        request: pytest.FixtureRequest) -> None:
    url = None
    if database == "postgresql":
        url = request.getfixturevalue("new_postgres_database")()
    run = ChaosRun(chaos_dir, node, seed, database_url=url, schedulers=2,
                   scheduler_env=lambda number: {"CORRAL_INSTANCE_NAME": f"machine-{number}"})
    run.farm.env["CORRAL_LEADER_LEASE_SECONDS"] = str(LEADER_LEASE)
    try:
        run.start()
        first = run.farm.wait_for(run.leading_scheduler, 30, "a scheduler to lead")
        health = run.farm.rpc.scheduler.health()
        assert health["ok"] and health["leadership"]["role"] in ("leader", "standby")
        run.submit(40, shortest=0.2, longest=1.2)
        time.sleep(run.random.uniform(1.0, 2.5))  # mid-burst: some done, some running, most queued
        killed_at = time.monotonic()
        run.inject("kill -9 leading scheduler", run.kill_leading_scheduler)
        survivor = run.farm.wait_for(lambda: standby_leads(run, first), 30,
                                     "the standby to take over")
        took = time.monotonic() - killed_at
        print(f"chaos seed={seed}: {survivor} took over from {first} after {took:.1f}s", flush=True)
        verdict = run.verdict()
    finally:
        run.stop()
    assert survivor != first
    # Not before the dead leader's lease ran out (it was renewed at most L/4 before the kill)...
    assert took >= LEADER_LEASE * (1 - FENCE) - 0.2, f"took over after {took:.1f}s"
    # ...and within one lease and a renewal interval.
    assert took <= LEADER_LEASE * (1 + FENCE) + TAKEOVER_SLACK, f"took over after {took:.1f}s"
    assert verdict.passed, verdict.details()
