"""Published heartbeats on a real farm: a registry killed with heartbeats in flight, a worker the
registry forgot, and a wanted state that reaches a worker with no reply to carry it."""

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection, Exchange, Queue

from services.registry.store import RegistryTable, Worker
from shared.db import Store, create_db_engine
from shared.identity import Role
from tests.farm import Farm


@contextmanager
def lost_events(farm: Farm) -> Iterator[list[str]]:
    """The worker ids of every `worker_lost` event the registry sends meanwhile (read at exit)."""
    heard: list[str] = []
    with Connection(farm.amqp_uri) as connection:
        queue = Queue(exclusive=True, auto_delete=True, routing_key="worker_lost",
                      exchange=Exchange("registry.events", type="topic", durable=True))
        with connection.Consumer(queue, callbacks=[
                lambda body, message: heard.append(body["worker_id"])], accept=["json"]):
            yield heard
            try:
                while True:
                    connection.drain_events(timeout=1)
            except TimeoutError:
                pass


def waiting_heartbeats(farm: Farm) -> int:
    out = farm.ctl("list_queues", "-p", farm.vhost, "name", "messages", "--quiet")
    counts = dict(line.split()[:2] for line in out.splitlines() if line.strip())
    return int(counts.get("corral.heartbeats", 0))


def states(farm: Farm) -> dict[str, str]:
    return {w["worker_id"]: w["state"] for w in farm.rpc.registry.list_workers()}


def test_a_registry_killed_with_heartbeats_in_flight_declares_nobody_lost_wrongly(
        farm: Farm) -> None:
    farm.start(workers=0)
    alive = [farm.start_worker(name=f"alive-{n}") for n in range(3)]
    doomed = farm.start_worker(name="doomed")
    with lost_events(farm) as lost:
        farm.kill("registry", signal.SIGKILL)
        farm.kill("doomed", signal.SIGKILL)  # dies while nobody listens
        # Twice the time after which a silent worker is lost: the heartbeats wait in their queue.
        time.sleep(6)
        assert waiting_heartbeats(farm) > 0
        farm.start_service("registry")
        farm.wait_for(lambda: states(farm).get(doomed) == "lost", 15,
                      "the worker killed meanwhile to be found lost")
        time.sleep(4)  # more than the lost-after time again, at the registry's pace
        assert all(states(farm)[worker_id] == "idle" for worker_id in alive), states(farm)
    assert lost == [doomed]


def test_a_worker_the_registry_lost_the_row_of_comes_back_by_its_heartbeat(farm: Farm) -> None:
    farm.start(workers=0)
    worker_id = farm.start_worker(name="forgotten")
    url = farm.env.get("CORRAL_REGISTRY_DB") or f"sqlite:///{farm.directory / 'data' / 'registry.db'}"
    store = Store(create_db_engine(url), RegistryTable.metadata)
    try:
        with store.write() as session:
            session.delete(session.get(Worker, worker_id))
    finally:
        store.dispose()
    farm.wait_for(lambda: states(farm).get(worker_id) == "idle", 10,
                  "the worker to be known again")
    entry = next(w for w in farm.rpc.registry.list_workers() if w["worker_id"] == worker_id)
    assert (entry["pool"], entry["name"], entry["bands"]) == ("cpu", "cpu-1",
                                                          ["low", "normal", "high"])


def test_a_drain_reaches_a_worker_that_sends_no_call_to_bring_it_back(farm: Farm) -> None:
    farm.start(workers=0)
    worker_id = farm.start_worker(name="told")
    wrangler: Any = farm.client(farm.token_for("wendy", Role.WRANGLER)).registry
    wrangler.set_worker_wanted_state(state="drain", worker_id=worker_id)
    farm.wait_for(lambda: states(farm).get(worker_id) == "drained", 10,
                  "the worker to say it is drained")
    log = (farm.directory / "told.log").read_text()
    assert "the registry wants this worker to drain" in log
    # It heard it by the registry's event: its only registration was its first.
    assert log.count("connected as") == 1
    wrangler.set_worker_wanted_state(state="enable", worker_id=worker_id)
    farm.wait_for(lambda: states(farm).get(worker_id) == "idle", 10,
                  "the worker to take work again")
