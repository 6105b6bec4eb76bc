"""The worker pool's rules: when to start a worker, which idle ones to stop, how long to back off."""

from pathlib import Path

import pytest

from services.pool.main import (
    ChildState,
    ChildView,
    PoolLimits,
    WorkerTemplate,
    backoff_after_exit,
    child_state,
    host_has_room,
    idle_extras_to_stop,
    wants_another_worker,
)

LIMITS = PoolLimits(max_workers=3, min_idle=1, idle_timeout=60)
IDLE, BUSY, STARTING = ChildState.IDLE, ChildState.BUSY, ChildState.STARTING


def children(*states: ChildState, idle_since: float | None = None) -> list[ChildView]:
    return [ChildView(pid, state, idle_since if state == IDLE else None)
            for pid, state in enumerate(states, start=100)]


# --- starting -------------------------------------------------------------------------------------

def test_empty_pool_starts_its_first_worker() -> None:
    assert wants_another_worker(LIMITS, [], now=0, not_before=0)


def test_worker_is_started_when_the_last_idle_one_takes_a_task() -> None:
    assert wants_another_worker(LIMITS, children(BUSY), now=0, not_before=0)


def test_no_worker_is_started_while_one_waits_for_work() -> None:
    assert not wants_another_worker(LIMITS, children(BUSY, IDLE), now=0, not_before=0)


def test_a_starting_worker_counts_as_waiting_so_one_demand_starts_one_worker() -> None:
    assert not wants_another_worker(LIMITS, children(BUSY, STARTING), now=0, not_before=0)


def test_no_worker_is_started_beyond_max_workers() -> None:
    assert not wants_another_worker(LIMITS, children(BUSY, BUSY, BUSY), now=0, not_before=0)


def test_stopping_workers_still_count_against_max_workers() -> None:
    assert not wants_another_worker(LIMITS, children(BUSY, BUSY, ChildState.STOPPING),
                                    now=0, not_before=0)


def test_min_idle_of_two_keeps_two_waiting() -> None:
    limits = PoolLimits(max_workers=4, min_idle=2, idle_timeout=60)
    assert wants_another_worker(limits, children(IDLE), now=0, not_before=0)
    assert not wants_another_worker(limits, children(IDLE, STARTING), now=0, not_before=0)


def test_no_worker_is_started_during_a_crash_backoff() -> None:
    assert not wants_another_worker(LIMITS, [], now=10, not_before=12)
    assert wants_another_worker(LIMITS, [], now=12, not_before=12)


def test_a_leaving_worker_does_not_count_as_waiting() -> None:
    assert wants_another_worker(LIMITS, children(ChildState.LEAVING), now=0, not_before=0)


# --- the host's room -----------------------------------------------------------------------------

@pytest.mark.parametrize(("free", "room"), [
    ({"cores": 4, "memory_mb": 8192, "gpus": 0}, True),
    ({"cores": 0.5, "memory_mb": 1, "gpus": 0}, True),
    ({"cores": 0, "memory_mb": 8192, "gpus": 2}, False),
    ({"cores": 4, "memory_mb": 0, "gpus": 2}, False),
    (None, True),  # no negotiator on the farm: nothing to ask
])
def test_host_has_room_only_with_free_cores_and_memory(free: dict[str, float] | None,
                                                       room: bool) -> None:
    assert host_has_room(free) is room


# --- stopping ------------------------------------------------------------------------------------

def test_idle_extra_is_stopped_after_the_idle_timeout() -> None:
    pool = [ChildView(1, IDLE, idle_since=0), ChildView(2, IDLE, idle_since=30)]
    assert idle_extras_to_stop(LIMITS, pool, now=61) == [1]


def test_idle_extra_is_kept_until_the_idle_timeout() -> None:
    pool = [ChildView(1, IDLE, idle_since=0), ChildView(2, IDLE, idle_since=0)]
    assert idle_extras_to_stop(LIMITS, pool, now=59) == []


def test_min_idle_workers_are_kept_however_long_they_wait() -> None:
    pool = [ChildView(1, IDLE, idle_since=0), ChildView(2, BUSY)]
    assert idle_extras_to_stop(LIMITS, pool, now=10_000) == []


def test_at_most_the_extras_beyond_min_idle_are_stopped_longest_idle_first() -> None:
    pool = [ChildView(1, IDLE, idle_since=5), ChildView(2, IDLE, idle_since=0),
            ChildView(3, IDLE, idle_since=3)]
    assert idle_extras_to_stop(LIMITS, pool, now=100) == [2, 3]


def test_starting_workers_do_not_make_an_idle_one_an_extra() -> None:
    pool = [ChildView(1, IDLE, idle_since=0), ChildView(2, STARTING)]
    assert idle_extras_to_stop(LIMITS, pool, now=100) == []


# --- crash backoff -------------------------------------------------------------------------------

def test_quick_deaths_in_a_row_back_off_exponentially_up_to_a_minute() -> None:
    deaths, delays = 0, []
    for _ in range(9):
        deaths, delay = backoff_after_exit(deaths, lifetime=0.8, told_to_stop=False)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_worker_that_lived_long_ends_the_crash_loop() -> None:
    assert backoff_after_exit(5, lifetime=600, told_to_stop=False) == (0, 0.0)


def test_a_worker_told_to_stop_is_no_crash() -> None:
    assert backoff_after_exit(2, lifetime=0.5, told_to_stop=True) == (2, 0.0)


# --- what the registry says ----------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "seen", "told", "state"), [
    (None, False, False, ChildState.STARTING),
    (None, True, False, ChildState.LEAVING),
    ("idle", True, False, ChildState.IDLE),
    ("busy", True, False, ChildState.BUSY),
    ("draining", True, False, ChildState.LEAVING),
    ("idle", True, True, ChildState.STOPPING),
])
def test_child_state_follows_the_registry(entry: str | None, seen: bool, told: bool,
                                          state: ChildState) -> None:
    assert child_state(entry, seen, told) is state


# --- limits and the workers' command line --------------------------------------------------------

@pytest.mark.parametrize(("max_workers", "min_idle", "timeout"), [(2, 3, 60), (0, 0, 60),
                                                                  (2, 1, -1)])
def test_impossible_limits_are_refused(max_workers: int, min_idle: int, timeout: float) -> None:
    with pytest.raises(ValueError):
        PoolLimits(max_workers, min_idle, timeout)


def test_workers_get_the_pools_host_and_resource_overrides() -> None:
    template = WorkerTemplate(pool="gpu", bands=["normal", "high"], host="render-07",
                              config=Path("/etc/corral.yaml"), cores=32, memory="64G", gpus=2)
    argv = template.argv()
    assert argv[argv.index("worker") + 1:] == [
        "run", "--pool", "gpu", "--bands", "normal,high", "--host", "render-07",
        "--config", "/etc/corral.yaml", "--cores", "32", "--memory", "64G", "--gpus", "2"]


def test_workers_hold_the_licences_the_pool_was_told_to_hold() -> None:
    argv = WorkerTemplate(pool="pixyz", bands=[], host="render-07",
                          hold_licences=("pixyz", "nuke=2")).argv()
    assert argv[argv.index("--host") + 2:] == ["--hold-licence", "pixyz",
                                               "--hold-licence", "nuke=2"]


def test_workers_detect_what_the_pool_was_not_told() -> None:
    argv = WorkerTemplate(pool="cpu", bands=[], host="render-07").argv()
    assert not {"--cores", "--memory", "--gpus", "--config"} & set(argv)


def test_a_worker_that_left_after_its_max_tasks_is_no_crash() -> None:
    assert backoff_after_exit(2, lifetime=0.5, told_to_stop=False, exit_code=0) == (2, 0.0)
    assert backoff_after_exit(2, lifetime=0.5, told_to_stop=False, exit_code=1) == (3, 4.0)
