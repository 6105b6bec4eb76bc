"""Real faults against a real farm while work flows; the ledger must show every task done once.

Each scenario runs the services and three workers on the suite's own RabbitMQ node, submits
ledger payloads, injects its faults at moments drawn from its seed (printed with the totals),
and passes only with nothing lost, duplicated, concurrent, unexpected or leaked.
"""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosRun
from tests.farm import mounted_tmpfs
from tests.rabbit import RabbitNode

pytestmark = pytest.mark.integration

Fault = Callable[[ChaosRun], None]

FAULTS: dict[str, Fault] = {
    "kill -9 scheduler": lambda run: run.kill_service("scheduler"),
    "kill -9 registry": lambda run: run.kill_service("registry"),
    "kill -9 negotiator": lambda run: run.kill_service("resource_negotiator"),
    "kill -9 license": lambda run: run.kill_service("license"),
    "kill -9 cleanup": lambda run: run.kill_service("cleanup"),
    "kill -9 worker": lambda run: run.kill_worker(),
    "kill -9 payload": lambda run: run.kill_payload(),
    "broker restart": lambda run: run.restart_broker(),
    "close_all_connections": lambda run: run.close_connections(),
    "poison messages": lambda run: run.poison(),
    # Longer than the farm's 3 s lease: nobody can renew; the scheduler must not hand out
    # again what still runs, and a worker that could not renew must stop its payload itself.
    "broker outage past the lease": lambda run: run.broker_outage(5.0),
    "worker stopped past its lease": lambda run: run.stop_worker(5.0),
    "worker cut off past its lease": lambda run: run.cut_off_worker(5.0),
    # Hostile payloads ride in every run's work (tests/chaos/payload.py); this one cannot.
    "memory hog": lambda run: run.memory_hog(),
}


BOUNDED = sorted(FAULTS)
"""Every fault, alone (twice) and a few combined. A payload that completes while its worker is
dead, frozen or cut off is reported by another worker of the host (services/worker/outbox.py),
so its task does not run again."""


@pytest.fixture
def run(chaos_dir: Path, node: RabbitNode, seed: int) -> Iterator[ChaosRun]:
    instance = ChaosRun(chaos_dir, node, seed).start()
    yield instance
    instance.stop()


def flow_with(run: ChaosRun, faults: list[str], tasks: int = 30) -> None:
    """Submit the work, then inject each fault at a random moment while it runs."""
    run.submit(tasks)
    for name in faults:
        time.sleep(run.random.uniform(0.3, 2.0))
        run.inject(name, lambda name=name: FAULTS[name](run))


@pytest.mark.parametrize("fault", BOUNDED)
def test_no_task_is_lost_or_run_twice_under(run: ChaosRun, fault: str) -> None:
    flow_with(run, [fault, fault])
    verdict = run.verdict()
    assert verdict.passed, verdict.details()


def test_no_task_is_lost_or_run_twice_under_random_faults_combined(run: ChaosRun) -> None:
    faults = [run.random.choice(BOUNDED) for _ in range(4)]
    flow_with(run, faults, tasks=40)
    verdict = run.verdict()
    assert verdict.passed, verdict.details()


def faults_in_turn(run: ChaosRun, faults: dict[str, Callable[[], None]], order: list[str],
                   tasks: int = 30) -> None:
    """Submit the work, inject the named faults in `order` at random moments, judge the run."""
    try:
        run.submit(tasks)
        for name in order:
            time.sleep(run.random.uniform(0.3, 1.5))
            run.inject(name, faults[name])
        verdict = run.verdict()
    finally:
        run.stop()
    assert verdict.passed, verdict.details()


def test_no_task_is_lost_or_run_twice_when_the_database_drops_connections_or_locks_a_table(
        chaos_dir: Path, node: RabbitNode, seed: int,
        new_postgres_database: Callable[[], str]) -> None:
    run = ChaosRun(chaos_dir, node, seed, database_url=new_postgres_database()).start()
    faults = {"database connections terminated": run.terminate_database_connections,
              # Past the farm's 3 s RPC timeout: claims, renewals and reports wait or fail.
              "task table locked past the RPC timeout": lambda: run.lock_task_table(4.0)}
    faults_in_turn(run, faults, [*sorted(faults), run.random.choice(sorted(faults))])


def test_no_task_is_lost_or_run_twice_when_the_storage_disk_fills_up(
        chaos_dir: Path, node: RabbitNode, seed: int) -> None:
    """Logs cannot be written for a while: those attempts fail and are retried, workers live."""
    with mounted_tmpfs(chaos_dir / "storage", "200m") as storage:
        run = ChaosRun(chaos_dir, node, seed, storage_root=storage).start()
        faults_in_turn(run, {"disk full": lambda: run.fill_storage(2.0)}, ["disk full"] * 2)


def test_no_task_is_lost_or_run_twice_when_the_pool_or_its_workers_are_killed(
        chaos_dir: Path, node: RabbitNode, seed: int) -> None:
    run = ChaosRun(chaos_dir, node, seed, pool=True).start()
    faults = {"kill -9 pool": run.kill_pool, "kill -9 a pool's worker": run.kill_pool_worker}
    faults_in_turn(run, faults, [*sorted(faults), run.random.choice(sorted(faults))])
