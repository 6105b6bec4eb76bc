"""The negotiator's reservations on SQLite and PostgreSQL: Lifeblood's sharing, all or nothing."""

import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from services.resource_negotiator import store as ops
from shared.db import Store, create_db_engine
from shared.errors import InvalidSpec
from shared.resources import GpuInfo, HostTotals, Resources, parse_size
from tests.farm import ROOT

GB = 1024


def report(store: Store, host: str = "render01", cores: float = 32, memory: str = "64G",
           gpus: int = 0, custom: dict[str, float] | None = None) -> dict[str, Any]:
    return ops.report_host(store, HostTotals(
        host, Resources(cores, parse_size(memory), gpus, custom or {}),
        tuple(GpuInfo(index, "RTX A6000", 48 * GB) for index in range(gpus))))


def reserve(store: Store, reservation_id: str, cores: float = 0, memory: str = "0",
            gpus: int = 0, host: str = "render01", worker_id: str = "w1", task_id: int = 1,
            attempt: int = 1, preferred: Resources | None = None,
            custom: dict[str, float] | None = None) -> dict[str, Any] | None:
    return ops.reserve(store, reservation_id, host, worker_id, task_id, attempt,
                       Resources(cores, parse_size(memory), gpus, custom or {}), preferred)


def free(store: Store, host: str = "render01") -> tuple[float, int]:
    amounts = ops.free(store, host)
    return amounts["cores"], amounts["memory_mb"]


def held_ids(store: Store) -> list[str]:
    return [r["id"] for host in ops.hosts(store) for r in host["reservations"]]


def same_database(store: Store) -> Store:
    """A second Store on the same database, as a restarted (or second) negotiator opens it."""
    url = store.engine.url.render_as_string(hide_password=False)
    return Store(create_db_engine(url), ops.NegotiatorTable.metadata)


def test_lifeblood_example_shares_one_host_between_workers_step_by_step(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    assert free(negotiator_store) == (32, 64 * GB)

    assert reserve(negotiator_store, "first", cores=8, memory="16G", worker_id="w1") is not None
    assert free(negotiator_store) == (24, 48 * GB)

    assert reserve(negotiator_store, "second", cores=20, memory="40G", worker_id="w2") is not None
    assert free(negotiator_store) == (4, 8 * GB)

    assert ops.release(negotiator_store, "first") is not None
    assert free(negotiator_store) == (12, 24 * GB)

    assert ops.release(negotiator_store, "second") is not None
    assert free(negotiator_store) == (32, 64 * GB)


def test_reservation_that_does_not_fit_is_refused_and_stores_nothing(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "running", cores=20, memory="40G")
    assert reserve(negotiator_store, "too-many-cores", cores=16, memory="1G") is None
    assert reserve(negotiator_store, "too-much-memory", cores=1, memory="32G") is None
    assert held_ids(negotiator_store) == ["running"]
    assert free(negotiator_store) == (12, 24 * GB)


def test_reservation_on_a_host_that_never_reported_is_refused(negotiator_store: Store) -> None:
    assert reserve(negotiator_store, "nowhere", cores=1, host="ghost") is None
    assert ops.free(negotiator_store, "ghost") == {"cores": 0, "memory_mb": 0, "gpus": 0,
                                                   "custom": {}}
    assert held_ids(negotiator_store) == []


def test_preferred_amount_is_granted_up_to_what_is_free(negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "first", cores=8, memory="16G")
    granted = reserve(negotiator_store, "greedy", cores=4, memory="8G",
                      preferred=Resources(cores=64, memory_mb=32 * GB))
    assert granted is not None
    assert (granted["resources"]["cores"], granted["resources"]["memory_mb"]) == (24, 32 * GB)
    assert free(negotiator_store) == (0, 16 * GB)


def test_same_reservation_id_gets_the_same_reservation_and_takes_once(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    first = reserve(negotiator_store, "task-1-attempt-1", cores=8, memory="16G")
    again = reserve(negotiator_store, "task-1-attempt-1", cores=8, memory="16G")
    assert again == first
    assert free(negotiator_store) == (24, 48 * GB)


def test_releasing_twice_or_releasing_what_was_never_held_changes_nothing(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "kept", cores=4, memory="4G")
    reserve(negotiator_store, "gone", cores=8, memory="16G")
    released = ops.release(negotiator_store, "gone")
    assert released is not None and released["id"] == "gone"
    assert ops.release(negotiator_store, "gone") is None
    assert ops.release(negotiator_store, "never-held") is None
    assert held_ids(negotiator_store) == ["kept"]
    assert free(negotiator_store) == (28, 60 * GB)


def test_gpus_are_held_by_distinct_indices(negotiator_store: Store) -> None:
    report(negotiator_store, gpus=4)
    first = reserve(negotiator_store, "first", cores=1, gpus=2)
    second = reserve(negotiator_store, "second", cores=1, gpus=2)
    assert first is not None and second is not None
    assert sorted(first["gpu_indices"] + second["gpu_indices"]) == [0, 1, 2, 3]
    assert reserve(negotiator_store, "third", cores=1, gpus=1) is None
    ops.release(negotiator_store, "first")
    third = reserve(negotiator_store, "third", cores=1, gpus=1)
    assert third is not None and third["gpu_indices"][0] in first["gpu_indices"]


def test_custom_amounts_are_reserved_like_the_others(negotiator_store: Store) -> None:
    report(negotiator_store, custom={"houdini": 2})
    assert reserve(negotiator_store, "first", cores=1, custom={"houdini": 2}) is not None
    assert reserve(negotiator_store, "second", cores=1, custom={"houdini": 1}) is None
    assert ops.free(negotiator_store, "render01")["custom"] == {}


def test_release_for_worker_frees_only_what_that_worker_holds(negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "a1", cores=8, memory="16G", worker_id="a", task_id=1)
    reserve(negotiator_store, "b1", cores=4, memory="8G", worker_id="b", task_id=2)
    reserve(negotiator_store, "a2", cores=2, memory="2G", worker_id="a", task_id=3)
    released = ops.release_for_worker(negotiator_store, "a")
    assert sorted(r["id"] for r in released) == ["a1", "a2"]
    assert held_ids(negotiator_store) == ["b1"]
    assert free(negotiator_store) == (28, 56 * GB)
    assert ops.release_for_worker(negotiator_store, "a") == []


def test_release_for_one_attempt_leaves_the_tasks_later_attempt(negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "t7-a1", cores=8, worker_id="a", task_id=7, attempt=1)
    reserve(negotiator_store, "t7-a2", cores=8, worker_id="b", task_id=7, attempt=2)
    assert [r["id"] for r in ops.release_for_task(negotiator_store, 7, 1)] == ["t7-a1"]
    assert held_ids(negotiator_store) == ["t7-a2"]
    assert [r["id"] for r in ops.release_for_task(negotiator_store, 7)] == ["t7-a2"]


def test_cancel_that_requeues_frees_the_old_attempt_but_not_the_new_one(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "t7-a1", cores=8, worker_id="a", task_id=7, attempt=1)
    reserve(negotiator_store, "t7-a2", cores=8, worker_id="b", task_id=7, attempt=2)
    released = ops.release_for_cancelled_task(negotiator_store, 7,
                                              {"attempt": 2, "state": "running"})
    assert [r["id"] for r in released] == ["t7-a1"]
    assert held_ids(negotiator_store) == ["t7-a2"]


def test_cancel_that_ends_the_task_frees_its_current_attempt(negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "t7-a2", cores=8, task_id=7, attempt=2)
    reserve(negotiator_store, "t8-a1", cores=8, task_id=8, attempt=1)
    released = ops.release_for_cancelled_task(negotiator_store, 7,
                                              {"attempt": 2, "state": "cancelled"})
    assert [r["id"] for r in released] == ["t7-a2"]
    assert held_ids(negotiator_store) == ["t8-a1"]


def test_cancel_of_a_task_the_scheduler_no_longer_knows_frees_all_of_it(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "t7-a3", cores=8, task_id=7, attempt=3)
    assert [r["id"] for r in ops.release_for_cancelled_task(negotiator_store, 7, None)] == \
        ["t7-a3"]


def test_lowered_totals_keep_running_work_but_take_nothing_new(negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G")
    reserve(negotiator_store, "running", cores=20, memory="40G")
    view = report(negotiator_store, cores=16, memory="32G")
    assert [r["id"] for r in view["reservations"]] == ["running"]
    assert (view["free"]["cores"], view["free"]["memory_mb"]) == (0, 0)
    assert reserve(negotiator_store, "new", cores=0.5, memory="1G") is None
    ops.release(negotiator_store, "running")
    assert free(negotiator_store) == (16, 32 * GB)


def test_hosts_lists_totals_reserved_free_and_reservations(negotiator_store: Store) -> None:
    report(negotiator_store, "render02", cores=8, memory="16G")
    report(negotiator_store, "render01", cores=32, memory="64G", gpus=1)
    reserve(negotiator_store, "r", cores=8, memory="16G", gpus=1, worker_id="w9", task_id=4,
            attempt=2)
    first, second = ops.hosts(negotiator_store)
    assert (first["host"], second["host"]) == ("render01", "render02")
    assert first["totals"] == {"cores": 32, "memory_mb": 64 * GB, "gpus": 1, "custom": {}}
    assert first["reserved"] == {"cores": 8, "memory_mb": 16 * GB, "gpus": 1, "custom": {}}
    assert first["free"] == {"cores": 24, "memory_mb": 48 * GB, "gpus": 0, "custom": {}}
    assert first["gpus"] == [{"index": 0, "model": "RTX A6000", "memory_mb": 48 * GB}]
    (held,) = first["reservations"]
    assert (held["worker_id"], held["task_id"], held["attempt"], held["gpu_indices"]) == \
        ("w9", 4, 2, [0])
    assert second["reservations"] == [] and second["free"]["cores"] == 8


def test_a_restarted_negotiator_sees_every_reservation_and_books_nothing_twice(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=32, memory="64G", gpus=2)
    first = reserve(negotiator_store, "first", cores=8, memory="16G", gpus=1)
    reserve(negotiator_store, "second", cores=20, memory="40G", gpus=1)
    negotiator_store.dispose()

    restarted = same_database(negotiator_store)
    try:
        assert free(restarted) == (4, 8 * GB)
        assert {r.id for r in ops.ledger(restarted).reservations("render01")} == \
            {"first", "second"}
        assert reserve(restarted, "first", cores=8, memory="16G", gpus=1) == first
        assert reserve(restarted, "third", cores=1, memory="1G", gpus=1) is None
        assert reserve(restarted, "fourth", cores=8, memory="1G") is None
        assert free(restarted) == (4, 8 * GB)
    finally:
        restarted.dispose()


RESERVE_MANY = textwrap.dedent("""
    import sys
    import time
    from services.resource_negotiator import store as ops
    from shared.db import Store, create_db_engine
    from shared.resources import Resources

    url, prefix, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = Store(create_db_engine(url), ops.NegotiatorTable.metadata)
    time.sleep(max(0.0, start_at - time.time()))  # all racers start together
    granted = sum(ops.reserve(store, f"{prefix}-{n}", "render01", prefix, n, 1,
                              Resources(1, 1024)) is not None for n in range(12))
    print(granted)
""")


def test_negotiators_racing_for_one_host_never_book_more_than_it_has(
        negotiator_store: Store) -> None:
    report(negotiator_store, cores=16, memory="64G")
    url = negotiator_store.engine.url.render_as_string(hide_password=False)
    start_at = str(time.time() + 2)
    racers = [subprocess.Popen([sys.executable, "-c", RESERVE_MANY, url, f"racer{n}", start_at],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for n in range(4)]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), outputs
    assert sum(int(out) for out, _ in outputs) == 16
    assert len(held_ids(negotiator_store)) == 16
    assert free(negotiator_store) == (0, 48 * GB)


@pytest.mark.parametrize("amounts, field", [
    ({"cores": -1}, "minimum.cores"),
    ({"cores": "eight"}, "minimum.cores"),
    ({"memory_mb": 1.5}, "minimum.memory_mb"),
    ({"gpus": True}, "minimum.gpus"),
    ({"cpus": 4}, "minimum.cpus"),
    ({"custom": {"houdini": -1}}, "minimum.custom.houdini"),
])
def test_bad_amounts_are_refused_naming_the_field(amounts: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec, match=f"^{field}:"):
        ops.resources_from_wire(amounts, "minimum")


def test_amounts_cross_the_wire_and_back_unchanged() -> None:
    amounts = {"cores": 2.5, "memory_mb": 4096, "gpus": 1, "custom": {"nuke": 1.0}}
    assert ops.resources_to_wire(ops.resources_from_wire(amounts, "minimum")) == amounts


def test_host_report_with_negative_cores_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidSpec, match="^cores:"):
        ops.host_totals_from_wire("render01", -4, 65536, [], None)


def test_host_report_with_the_same_gpu_twice_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="^gpus:"):
        ops.host_totals_from_wire("render01", 32, 65536, [{"index": 0}, {"index": 0}], None)


def test_a_report_that_changes_a_hosts_totals_says_what_it_replaced(negotiator_store: Store) -> None:
    assert report(negotiator_store, cores=8, memory="16G")["replaced"] is None
    assert report(negotiator_store, cores=8, memory="16G")["replaced"] is None  # same again
    second = report(negotiator_store, cores=4, memory="8G")
    assert second["replaced"]["cores"] == 8 and second["replaced"]["memory_mb"] == 16 * GB
    assert second["replaced"]["reported_at"] is not None
    assert second["totals"]["cores"] == 4 and free(negotiator_store) == (4, 8 * GB)
