"""The registry's state changes, on SQLite and PostgreSQL alike."""

import time

from services.registry import store as ops
from shared.db import Store


def register(store: Store, worker_id: str = "w1", pool: str = "cpu") -> None:
    ops.register_worker(store, worker_id, "render01", pool, ["normal", "high"], 4242)


def test_registering_announces_the_worker(registry_store: Store) -> None:
    reply, emitted = ops.register_worker(registry_store, "w1", "render01", "cpu",
                                         ["normal"], 1)
    assert reply["state"] == "idle" and reply["bands"] == ["normal"]
    assert emitted == [("worker_joined", {"worker_id": "w1", "host": "render01", "pool": "cpu",
                                          "bands": ["normal"], "wanted": "active"})]


def test_heartbeat_records_state_and_current_task(registry_store: Store) -> None:
    register(registry_store)
    reply, emitted = ops.worker_heartbeat(registry_store, "w1", "busy", 17)
    assert reply == {"known": True, "wanted": "active"} and emitted == []
    (worker,) = ops.list_workers(registry_store)
    assert (worker["state"], worker["current_task"]) == ("busy", 17)


def test_heartbeat_from_an_unknown_worker_asks_it_to_register(registry_store: Store) -> None:
    assert ops.worker_heartbeat(registry_store, "ghost", "idle", None)[0] == {"known": False}


def test_silent_worker_is_marked_lost_once(registry_store: Store) -> None:
    register(registry_store, "w1")
    register(registry_store, "w2")
    time.sleep(1.2)
    ops.worker_heartbeat(registry_store, "w2", "idle", None)
    # w1 silent for 1.2 s, w2 for a moment: a second of margin for a slow machine.
    emitted = ops.mark_lost_workers(registry_store, lost_after=1.0)
    assert [payload["worker_id"] for _, payload in emitted] == ["w1"]
    assert ops.mark_lost_workers(registry_store, lost_after=1.0) == []
    assert [w["worker_id"] for w in ops.list_workers(registry_store, alive=True)] == ["w2"]


def test_lost_worker_that_heartbeats_again_rejoins(registry_store: Store) -> None:
    register(registry_store, "w1")
    time.sleep(0.15)
    ops.mark_lost_workers(registry_store, lost_after=0.1)
    _, emitted = ops.worker_heartbeat(registry_store, "w1", "idle", None)
    assert [event for event, _ in emitted] == ["worker_joined"]
    assert ops.list_workers(registry_store, alive=True)[0]["state"] == "idle"


def test_leaving_is_announced_once(registry_store: Store) -> None:
    register(registry_store)
    assert [e for e, _ in ops.leave_worker(registry_store, "w1")[1]] == ["worker_left"]
    assert ops.leave_worker(registry_store, "w1")[1] == []
    assert ops.list_workers(registry_store, alive=True) == []
    assert ops.list_workers(registry_store)[0]["state"] == "left"


def test_list_workers_filters_by_pool(registry_store: Store) -> None:
    register(registry_store, "w1", pool="cpu")
    register(registry_store, "w2", pool="gpu")
    assert [w["worker_id"] for w in ops.list_workers(registry_store, pool="gpu")] == ["w2"]


def test_service_heartbeats_show_which_services_are_alive(registry_store: Store) -> None:
    ops.service_heartbeat(registry_store, "scheduler", "head01")
    ops.service_heartbeat(registry_store, "scheduler", "head01")
    (service,) = ops.list_services(registry_store, alive_within=5)
    assert (service["service"], service["host"], service["alive"]) == \
        ("scheduler", "head01", True)


def test_the_overview_summary_counts_workers_by_state_with_their_pools_and_live_hosts(
        registry_store: Store) -> None:
    register(registry_store, "w1")
    register(registry_store, "w2", pool="gpu")
    ops.register_worker(registry_store, "w3", "render02", "cpu", ["normal"], 1)
    ops.leave_worker(registry_store, "w3")
    by_state, pools, hosts = ops.worker_summary(registry_store)
    assert by_state == {"idle": 2, "left": 1}
    assert pools == {"cpu", "gpu"} and hosts == ["render01"]
