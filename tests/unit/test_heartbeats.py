"""Published heartbeats: applied by the registry in batches, and what a worker does with its line."""

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from services.registry import store as ops
from services.registry.control import set_wanted_state
from services.worker.control import Obedience
from services.worker.link import FarmLink
from services.worker.rpc import AsyncRpcClient
from shared.db import Store
from shared.heartbeat import Heartbeat
from shared.worker_control import Wanted


def beat(worker_id: str, state: str = "idle", wanted: str = "active",
         current_task: int | None = None, **fields: Any) -> Heartbeat:
    return Heartbeat(worker_id=worker_id, state=state, current_task=current_task,
                     wanted=Wanted(wanted), host=fields.get("host", "render01"), pool="cpu",
                     bands=["normal"], pid=7, name=fields.get("name", worker_id),
                     sent_at=time.time())


def states(store: Store) -> dict[str, tuple[str, int | None]]:
    return {w["worker_id"]: (w["state"], w["current_task"]) for w in ops.list_workers(store)}


def test_a_batch_is_applied_at_once_and_each_workers_last_heartbeat_counts(
        registry_store: Store) -> None:
    for worker_id in ("w1", "w2", "w3"):
        ops.register_worker(registry_store, worker_id, "render01", "cpu", ["normal"], 1, worker_id)
    emitted = ops.apply_heartbeats(registry_store, [
        beat("w1", "busy", current_task=5), beat("w2"), beat("w1", "idle"),
        beat("w3", "busy", current_task=9)])
    assert emitted == []
    assert states(registry_store) == {"w1": ("idle", None), "w2": ("idle", None),
                                      "w3": ("busy", 9)}


def test_applying_the_same_batch_twice_changes_nothing_more(registry_store: Store) -> None:
    """A registry killed before its ack gets the batch again: last seen, nothing announced."""
    ops.register_worker(registry_store, "w1", "render01", "cpu", ["normal"], 1, "w1")
    batch = [beat("w1", "busy", current_task=3)]
    assert ops.apply_heartbeats(registry_store, batch) == []
    assert ops.apply_heartbeats(registry_store, batch) == []
    assert states(registry_store) == {"w1": ("busy", 3)}


def test_a_worker_the_registry_does_not_know_joins_from_its_heartbeat(
        registry_store: Store) -> None:
    emitted = ops.apply_heartbeats(registry_store, [beat("ghost", "busy", current_task=4)])
    assert emitted == [("worker_joined", {"worker_id": "ghost", "host": "render01",
                                          "pool": "cpu", "bands": ["normal"],
                                          "wanted": "active"})]
    (worker,) = ops.list_workers(registry_store)
    assert (worker["state"], worker["current_task"], worker["name"]) == ("busy", 4, "ghost")


def test_a_lost_worker_rejoins_and_one_that_left_stays_gone(registry_store: Store) -> None:
    for worker_id in ("lost", "left"):
        ops.register_worker(registry_store, worker_id, "render01", "cpu", ["normal"], 1, worker_id)
    time.sleep(0.15)
    ops.mark_lost_workers(registry_store, lost_after=0.1)
    ops.leave_worker(registry_store, "left")
    emitted = ops.apply_heartbeats(registry_store, [beat("lost"), beat("left")])
    assert [(event, payload["worker_id"]) for event, payload in emitted] == [
        ("worker_joined", "lost")]
    assert states(registry_store) == {"lost": ("idle", None), "left": ("left", None)}


def test_a_worker_obeying_the_wrong_state_is_told_again(registry_store: Store) -> None:
    """A drain the worker missed (its `worker_controlled` event) is sent again by its heartbeat."""
    for worker_id in ("w1", "w2"):
        ops.register_worker(registry_store, worker_id, "render01", "cpu", ["normal"], 1, worker_id)
    set_wanted_state(registry_store, "drain", "wendy", worker_id="w1")
    emitted = ops.apply_heartbeats(registry_store, [beat("w1"), beat("w2")])
    assert emitted == [("worker_controlled", {"workers": {"w1": "drain"}})]
    assert ops.apply_heartbeats(registry_store, [beat("w1", "drained", "drain"),
                                                 beat("w2")]) == []


def test_the_registrys_own_backlog_is_not_a_workers_silence(registry_store: Store) -> None:
    ops.register_worker(registry_store, "w1", "render01", "cpu", ["normal"], 1, "w1")
    time.sleep(0.3)
    # Heartbeats published in the last 10 s still wait in the queue: its silence is not known.
    assert ops.mark_lost_workers(registry_store, lost_after=0.1, unheard_seconds=10) == []
    assert [p["worker_id"] for _, p in ops.mark_lost_workers(registry_store, 0.1, 0.0)] == ["w1"]


# --- the worker's side ----------------------------------------------------------------------------

def obedience(calls: list[str]) -> Obedience:
    async def stop_consuming() -> None:
        calls.append("stop consuming")

    async def start_consuming() -> None:
        calls.append("start consuming")

    return Obedience(stop_consuming, start_consuming, lambda now: calls.append("stop"))


def test_a_worker_hears_the_events_that_name_it_and_no_others() -> None:
    calls: list[str] = []
    obeying = obedience(calls)

    async def hear() -> None:
        await obeying.hear_event({"workers": {"other": "disable"}}, "w1")
        await obeying.hear_event({"workers": {"w1": "drain", "other": "stop"}}, "w1")
        await obeying.hear_event({"something": "else"}, "w1")

    asyncio.run(hear())
    assert calls == ["stop consuming"] and obeying.wanted is Wanted.DRAIN


class FakeRpc(AsyncRpcClient):
    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(SimpleNamespace(), token="worker-token")
        self.reply: dict[str, Any] = reply
        self.calls: list[str] = []

    async def call(self, service: str, method: str, **kwargs: Any) -> Any:
        self.calls.append(f"{service}.{method}")
        return self.reply


class FakeChannel:
    is_closed = False

    def __init__(self) -> None:
        self.published: list[tuple[Any, str]] = []
        self.default_exchange = self

    async def publish(self, message: Any, routing_key: str, **options: Any) -> None:
        self.published.append((message, routing_key))


class Link(FarmLink):
    def __init__(self, reply: dict[str, Any]) -> None:
        self.settings = SimpleNamespace(rpc_timeout_seconds=1)
        self.worker_id, self.name, self.host, self.pool, self.bands = "w1", "cpu-1", "h", "cpu", ["normal"]
        self.current = None
        self.calls: list[str] = []
        self.control = obedience(self.calls)
        self._rpc = FakeRpc(reply)
        self._reports = FakeChannel()
        self._connected = asyncio.Event()
        self._connected.set()

    async def beat_once(self) -> None:
        await self._register()
        if not await self._publish_heartbeat():
            await self._rpc_heartbeat()


def test_a_worker_publishes_its_heartbeat_when_the_registry_names_a_queue() -> None:
    link = Link({"wanted": "drain", "heartbeats": "corral.heartbeats"})
    asyncio.run(link.beat_once())
    assert link._rpc.calls == ["registry.register_worker"]  # no heartbeat by RPC
    ((message, routing_key),) = link._reports.published
    assert routing_key == "corral.heartbeats"
    assert message.headers == {"nameko.auth_token": "worker-token"}
    sent = Heartbeat.model_validate_json(message.body)
    assert (sent.worker_id, sent.state, sent.wanted, sent.name) == ("w1", "drained", "drain",
                                                                    "cpu-1")


def test_a_worker_heartbeats_by_rpc_to_a_registry_without_the_queue() -> None:
    link = Link({"wanted": "active", "known": True})
    asyncio.run(link.beat_once())
    assert link._rpc.calls == ["registry.register_worker",
                               "registry.worker_heartbeat"]
    assert link._reports.published == []
