"""Per-host licence pools and seats held by a worker for its life, on SQLite and PostgreSQL."""

from typing import Any

from services.license import store as ops
from shared.db import Store


def acquire(store: Store, lease_id: str, wanted: dict[str, int], host: str | None,
            worker_id: str = "w1", task_id: int = 1) -> dict[str, Any] | None:
    return ops.acquire(store, lease_id, task_id, 1, worker_id, wanted, host=host)


def hold(store: Store, worker_id: str, wanted: dict[str, int], host: str = "a") -> Any:
    return ops.acquire(store, f"held by {worker_id}", 0, 0, worker_id, wanted, host=host,
                       lifetime=True)


def view(store: Store, name: str) -> dict[str, Any]:
    return ops.pool_view(store, name)


def test_two_tasks_on_one_host_share_a_seat_and_a_third_host_needs_another(
        licence_store: Store) -> None:
    ops.set_pool(licence_store, "redshift", 2, per_host=True)
    assert acquire(licence_store, "t1", {"redshift": 1}, "node-a") is not None
    assert acquire(licence_store, "t2", {"redshift": 1}, "node-a") is not None
    assert (view(licence_store, "redshift")["in_use"], view(licence_store, "redshift")["free"]) \
        == (1, 1)
    assert acquire(licence_store, "t3", {"redshift": 1}, "node-b") is not None
    assert acquire(licence_store, "t4", {"redshift": 1}, "node-c") is None
    pool = view(licence_store, "redshift")
    assert (pool["in_use"], pool["free"], pool["hosts"]) == (2, 0, ["node-a", "node-b"])
    # node-a keeps its seat while one of its tasks still holds it.
    ops.release(licence_store, "t1")
    assert acquire(licence_store, "t4", {"redshift": 1}, "node-c") is None
    assert acquire(licence_store, "t5", {"redshift": 1}, "node-a") is not None
    ops.release(licence_store, "t2")
    ops.release(licence_store, "t5")
    assert view(licence_store, "redshift")["hosts"] == ["node-b"]
    assert acquire(licence_store, "t4", {"redshift": 1}, "node-c") is not None


def test_a_counted_pool_still_takes_a_token_per_task_on_one_host(licence_store: Store) -> None:
    ops.set_pool(licence_store, "nuke", 2)
    assert acquire(licence_store, "t1", {"nuke": 1}, "node-a") is not None
    assert acquire(licence_store, "t2", {"nuke": 1}, "node-a") is not None
    assert acquire(licence_store, "t3", {"nuke": 1}, "node-a") is None
    assert view(licence_store, "nuke")["in_use"] == 2


def test_a_lease_naming_no_host_takes_a_per_host_seat_of_its_own(licence_store: Store) -> None:
    ops.set_pool(licence_store, "redshift", 2, per_host=True)
    acquire(licence_store, "t1", {"redshift": 1}, None)
    acquire(licence_store, "t2", {"redshift": 1}, None)
    assert view(licence_store, "redshift")["in_use"] == 2
    assert acquire(licence_store, "t3", {"redshift": 1}, None) is None


def test_a_host_asking_more_seats_than_it_holds_takes_only_the_difference(
        licence_store: Store) -> None:
    ops.set_pool(licence_store, "redshift", 3, per_host=True)
    acquire(licence_store, "t1", {"redshift": 1}, "node-a")
    assert acquire(licence_store, "t2", {"redshift": 2}, "node-a") is not None
    assert (view(licence_store, "redshift")["in_use"], view(licence_store, "redshift")["free"]) \
        == (2, 1)


def test_set_pool_changes_how_a_pool_counts_only_when_told(licence_store: Store) -> None:
    ops.set_pool(licence_store, "redshift", 2, per_host=True)
    assert ops.set_pool(licence_store, "redshift", 4)["per_host"] is True
    assert ops.set_pool(licence_store, "redshift", 4, per_host=False)["per_host"] is False


def test_the_config_sets_how_an_existing_pool_counts_and_keeps_its_count(
        licence_store: Store) -> None:
    ops.set_pool(licence_store, "redshift", 7)
    assert ops.ensure_pool(licence_store, "redshift", 2, per_host=True) is False
    pool = view(licence_store, "redshift")
    assert (pool["total"], pool["per_host"]) == (7, True)


def test_a_licence_server_count_takes_off_corral_seats_not_corral_leases(
        licence_store: Store) -> None:
    ops.set_pool(licence_store, "redshift", 4, per_host=True)
    acquire(licence_store, "t1", {"redshift": 1}, "node-a")
    acquire(licence_store, "t2", {"redshift": 1}, "node-a")
    # The server sees node-a's one check-out and two by hand elsewhere.
    pool = ops.record_sync(licence_store, "redshift", 4, 3, "flexlm")
    assert (pool["in_use"], pool["external_in_use"], pool["free"]) == (1, 2, 1)


def test_a_seat_held_for_a_workers_life_outlasts_task_ends_and_goes_with_the_worker(
        licence_store: Store) -> None:
    ops.set_pool(licence_store, "pixyz", 1)
    lease = hold(licence_store, "w1", {"pixyz": 1})
    assert lease is not None and lease["lifetime"] is True and lease["task_id"] == 0
    assert hold(licence_store, "w2", {"pixyz": 1}) is None
    assert hold(licence_store, "w1", {"pixyz": 1}) == lease  # asking again takes nothing more
    assert ops.release_for_task(licence_store, 0) == []
    assert ops.release_for_task(licence_store, 0, 0) == []
    assert ops.release_for_cancelled_task(licence_store, 0, None) == []
    assert view(licence_store, "pixyz")["free"] == 0
    released = ops.release_for_worker(licence_store, "w1")
    assert [r["id"] for r in released] == ["held by w1"]
    assert hold(licence_store, "w2", {"pixyz": 1}) is not None


def test_usable_counts_one_more_task_per_lifetime_seat_and_per_holding_host(
        licence_store: Store) -> None:
    ops.set_pool(licence_store, "pixyz", 2)
    hold(licence_store, "w1", {"pixyz": 1})
    pixyz = view(licence_store, "pixyz")
    assert (pixyz["free"], pixyz["usable"]) == (1, 2)
    assert [h["worker_id"] for h in pixyz["holders"] if h["lifetime"]] == ["w1"]
    ops.set_pool(licence_store, "redshift", 1, per_host=True)
    acquire(licence_store, "t1", {"redshift": 1}, "node-a")
    redshift = view(licence_store, "redshift")
    assert (redshift["free"], redshift["usable"]) == (0, 1)
