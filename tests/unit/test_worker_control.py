"""Worker control without a broker: the registry's kept wanted states, the worker's obedience and
name, the scheduler's dispatcher and `why`, and the pool's rule for a held host."""

import asyncio
from pathlib import Path

import pytest

from services.pool.main import host_held
from services.registry import control
from services.registry import store as registry_ops
from services.scheduler import store as scheduler_ops
from services.scheduler.dispatch import IdleWorker
from services.scheduler.dispatcher import Dispatcher
from services.worker.control import NameClaim, Obedience
from shared.db import Store
from shared.errors import InvalidArgument, NotFound
from shared.worker_control import Wanted
from tests.unit.conftest import BANDS
from tests.unit.test_scheduler_store import submit, task_ids


def join(store: Store, worker_id: str, host: str = "render-07", name: str | None = None,
         pool: str = "cpu") -> str:
    reply, _ = registry_ops.register_worker(store, worker_id, host, pool, ["normal"], 1,
                                            name or f"{pool}-1")
    return str(reply["wanted"])


def wanted_of(store: Store, worker_id: str) -> str:
    return {w["worker_id"]: w["wanted"] for w in registry_ops.list_workers(store)}[worker_id]


def test_a_disable_holds_for_the_next_worker_of_the_same_host_and_name(
        registry_store: Store) -> None:
    join(registry_store, "w1")
    control.set_wanted_state(registry_store, "disable", "wendy", worker_id="w1")
    registry_ops.leave_worker(registry_store, "w1")
    assert join(registry_store, "w2") == "disable"
    assert join(registry_store, "w3", name="cpu-2") == "active"  # another worker on that host
    assert join(registry_store, "w4", host="render-08") == "active"  # the same name elsewhere


def test_enable_lifts_a_drain_and_the_heartbeat_says_so(registry_store: Store) -> None:
    join(registry_store, "w1")
    control.set_wanted_state(registry_store, "drain", "wendy", worker_id="w1")
    reply, _ = registry_ops.worker_heartbeat(registry_store, "w1", "busy", 7)
    assert reply == {"known": True, "wanted": "drain"}
    control.set_wanted_state(registry_store, "enable", "wendy", worker_id="w1")
    reply, _ = registry_ops.worker_heartbeat(registry_store, "w1", "idle", None)
    assert reply["wanted"] == "active"


def test_a_stop_is_for_the_running_worker_only(registry_store: Store) -> None:
    join(registry_store, "w1")
    reply, emitted = control.set_wanted_state(registry_store, "stop", "wendy", worker_id="w1",
                                              now=True)
    assert reply["workers"] == {"w1": "stop-now"} and reply["target"] == "worker w1"
    assert emitted == [("worker_controlled", {"workers": {"w1": "stop-now"}})]
    registry_ops.leave_worker(registry_store, "w1")
    assert join(registry_store, "w2") == "active"


def test_a_disabled_host_holds_the_workers_it_starts_later(registry_store: Store) -> None:
    join(registry_store, "w1")
    reply, _ = control.set_wanted_state(registry_store, "disable", "wendy", host="render-07")
    assert reply["workers"] == {"w1": "disable"}
    assert join(registry_store, "w2", name="cpu-2") == "disable"
    assert host_held(registry_ops.list_workers(registry_store, alive=True), "render-07")
    control.set_wanted_state(registry_store, "enable", "wendy", host="render-07")
    assert (wanted_of(registry_store, "w1"), wanted_of(registry_store, "w2")) == ("active",
                                                                                 "active")
    assert not host_held(registry_ops.list_workers(registry_store, alive=True), "render-07")


def test_a_pools_drain_is_kept_for_each_of_its_live_workers(registry_store: Store) -> None:
    join(registry_store, "w1")
    join(registry_store, "w2", name="gpu-1", pool="gpu")
    reply, _ = control.set_wanted_state(registry_store, "drain", "wendy", pool="cpu")
    assert reply["workers"] == {"w1": "drain"}
    assert wanted_of(registry_store, "w2") == "active"


@pytest.mark.parametrize("selectors", [{}, {"worker_id": "w1", "host": "render-07"}])
def test_a_control_names_exactly_one_selector(registry_store: Store,
                                              selectors: dict[str, str]) -> None:
    join(registry_store, "w1")
    with pytest.raises(InvalidArgument, match="exactly one"):
        control.set_wanted_state(registry_store, "drain", "wendy", **selectors)


def test_controls_of_unknown_workers_and_states_are_refused(registry_store: Store) -> None:
    with pytest.raises(NotFound):
        control.set_wanted_state(registry_store, "drain", "wendy", worker_id="nobody")
    with pytest.raises(NotFound):
        control.set_wanted_state(registry_store, "stop", "wendy", pool="cpu")
    join(registry_store, "w1")
    with pytest.raises(InvalidArgument, match="state"):
        control.set_wanted_state(registry_store, "pause", "wendy", worker_id="w1")


def test_no_worker_may_take_the_name_that_stands_for_a_whole_host(registry_store: Store) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        join(registry_store, "w1", name="*")


# --- the worker -------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def stop_consuming(self) -> None:
        self.calls.append("stop consuming")

    async def start_consuming(self) -> None:
        self.calls.append("start consuming")

    def stop(self, now: bool) -> None:
        self.calls.append("stop now" if now else "stop")


def obey(*replies: dict[str, str]) -> tuple[Obedience, list[str]]:
    recorder = Recorder()
    obedience = Obedience(recorder.stop_consuming, recorder.start_consuming, recorder.stop)

    async def hear_all() -> None:
        for reply in replies:
            await obedience.hear(reply)

    asyncio.run(hear_all())
    return obedience, recorder.calls


def test_a_disabled_worker_stops_consuming_and_an_enabled_one_consumes_again() -> None:
    obedience, calls = obey({"wanted": "disable"})
    assert calls == ["stop consuming"] and not obedience.takes_work
    assert (obedience.state(busy=True), obedience.state(busy=False)) == ("draining", "disabled")
    _, calls = obey({"wanted": "disable"}, {"wanted": "disable"}, {"wanted": "active"})
    assert calls == ["stop consuming", "start consuming"]


def test_a_stop_is_obeyed_once_and_now_hands_the_task_back() -> None:
    _, calls = obey({"wanted": "stop-now"}, {"wanted": "stop-now"})
    assert calls == ["stop consuming", "stop now"]
    obedience, calls = obey({"known": "true"}, {"wanted": "sideways"})
    assert calls == [] and obedience.wanted is Wanted.ACTIVE


def test_workers_without_a_name_take_the_lowest_free_one_and_give_it_back(tmp_path: Path) -> None:
    first, second = NameClaim(tmp_path, "cpu"), NameClaim(tmp_path, "cpu")
    assert (first.take(), second.take()) == ("cpu-1", "cpu-2")
    first.release()
    assert NameClaim(tmp_path, "cpu").take() == "cpu-1"
    assert NameClaim(tmp_path, "gpu").take() == "gpu-1"


# --- the scheduler ----------------------------------------------------------------------------

def test_held_workers_get_no_release_and_why_names_them(scheduler_store: Store) -> None:
    from shared.config import settings_from_mapping

    dispatcher = Dispatcher(settings_from_mapping({}), scheduler_store, spawn=lambda _: None)
    dispatcher.set_worker("w1", "cpu", ["normal"], "render-07", "disable")
    assert dispatcher.workers == {} and [w for w, _ in dispatcher.held.values()] == [
        IdleWorker("w1", "cpu", frozenset({"normal"}), "render-07")]
    (task_id,) = task_ids(scheduler_store, submit(scheduler_store)["id"])
    assert scheduler_ops.plan_next_releases(scheduler_store, list(dispatcher.workers.values()),
                                            [b.name for b in BANDS]) == []
    why = scheduler_ops.why_task(scheduler_store, task_id, dispatcher.workers.values(),
                                 held=dispatcher.held.values())
    assert why["code"] == "workers_held" and why["workers"] == {"w1": "disable"}
    assert "w1 (disabled)" in why["reason"]
    assert dispatcher.set_wanted("w1", "active") is True
    assert list(dispatcher.workers) == ["w1"] and dispatcher.held == {}
    assert len(scheduler_ops.plan_next_releases(scheduler_store,
                                                list(dispatcher.workers.values()),
                                                [b.name for b in BANDS])) == 1
