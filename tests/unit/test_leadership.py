"""The scheduler's leader lease on both databases: acquire, renew, expiry, takeover and fencing; and
the store's writer lock that lets two instances share one database."""

import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, text

from services.scheduler import store as ops
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.leadership import FENCE, Leadership, hold, holder_gone, resign
from shared.config import settings_from_mapping
from shared.db import Store, writer_lock_query
from tests.unit.test_scheduler_store import claim, submit, task_ids

LEASE = 0.4


def never_gone(holder: str) -> bool:
    return False


def test_the_first_instance_takes_the_lease_and_renews_it_in_the_same_term(
        scheduler_store: Store) -> None:
    first = hold(scheduler_store, "a", None, LEASE, never_gone)
    assert (first.holder, first.term) == ("a", 1)
    assert first.expires_at == pytest.approx(first.now + LEASE)
    renewed = hold(scheduler_store, "a", 1, LEASE, never_gone)
    assert (renewed.holder, renewed.term) == ("a", 1)
    assert renewed.expires_at >= first.expires_at


def test_another_instance_waits_while_the_lease_holds_and_takes_it_once_it_ran_out(
        scheduler_store: Store) -> None:
    hold(scheduler_store, "a", None, LEASE, never_gone)
    refused = hold(scheduler_store, "b", None, LEASE, never_gone)
    assert (refused.holder, refused.term) == ("a", 1)
    time.sleep(LEASE + 0.1)
    taken = hold(scheduler_store, "b", None, LEASE, never_gone)
    assert (taken.holder, taken.term) == ("b", 2)
    # The old leader's renewal of its term now finds another holder: it is refused.
    late = hold(scheduler_store, "a", 1, LEASE, never_gone)
    assert (late.holder, late.term) == ("b", 2)


def test_a_lease_given_up_or_held_by_a_dead_process_on_this_host_is_taken_at_once(
        scheduler_store: Store) -> None:
    hold(scheduler_store, "a", None, LEASE * 100, never_gone)
    assert resign(scheduler_store, "a")
    assert hold(scheduler_store, "b", None, LEASE, never_gone).holder == "b"
    assert not resign(scheduler_store, "a")  # not its lease any more

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = f"{socket.gethostname()}/{dead.pid}/feedface"
    assert holder_gone(ghost) and not holder_gone(f"{socket.gethostname()}/1/x")
    assert not holder_gone(f"elsewhere.example/{dead.pid}/feedface")
    assert resign(scheduler_store, "b")
    assert hold(scheduler_store, ghost, None, LEASE * 100, never_gone).holder == ghost
    assert hold(scheduler_store, "c", None, LEASE).holder == "c"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_leader_acts_until_its_fence_and_stops_there_when_it_cannot_renew(
        scheduler_store: Store) -> None:
    clock, started = Clock(), []
    leader = Leadership(scheduler_store, 10.0, lambda: started.append("a"), holder="a",
                        clock=clock, gone=never_gone)
    assert not leader.leading()
    leader.tick()
    assert leader.leading() and leader.term == 1 and started == ["a"]
    assert leader.renew_every == 10.0 * FENCE
    clock.now += 10.0 * (1 - FENCE) - 0.01
    assert leader.leading()
    clock.now += 0.02  # past the fence, not renewed (the database away): it stops acting
    assert not leader.leading()
    assert leader.health()["role"] == "standby"
    # Its next renewal finds the lease still its own: a new term, its views rebuilt first.
    leader.tick()
    assert leader.leading() and leader.term == 2 and started == ["a", "a"]


def test_a_standby_leads_only_after_the_leader_lapses_and_the_old_leader_then_stands_by(
        scheduler_store: Store) -> None:
    started: list[str] = []
    a = Leadership(scheduler_store, LEASE, lambda: started.append("a"), holder="a",
                   gone=never_gone)
    b = Leadership(scheduler_store, LEASE, lambda: started.append("b"), holder="b",
                   gone=never_gone)
    a.tick()
    b.tick()
    assert a.leading() and not b.leading()
    assert b.health() == {"instance": "b", "role": "standby", "leader": "a", "term": 1}
    time.sleep(LEASE + 0.1)  # a is frozen: it renews nothing
    assert not a.leading()  # its own fence passed before the database let anyone take over
    b.tick()
    assert b.leading() and b.term == 2
    a.tick()
    assert not a.leading() and a.health()["leader"] == "b"
    assert started == ["a", "b"]


def test_a_new_term_whose_views_cannot_be_rebuilt_does_not_act(scheduler_store: Store) -> None:
    def fail() -> None:
        raise RuntimeError("database away")

    leader = Leadership(scheduler_store, LEASE, fail, holder="a", gone=never_gone)
    with pytest.raises(RuntimeError):
        leader.tick()
    assert not leader.leading()


def test_taking_over_gives_running_tasks_a_lease_of_grace_and_keeps_fairness(
        scheduler_store: Store) -> None:
    ana = submit(scheduler_store, tasks=1, user="ana")
    bob = submit(scheduler_store, tasks=2, user="bob")
    for task_id in task_ids(scheduler_store, ana["id"]) + task_ids(scheduler_store, bob["id"]):
        with scheduler_store.write() as session:
            session.execute(text("UPDATE task SET state='dispatched', dispatched_at=:t "
                                 "WHERE id=:id"), {"t": time.time() + task_id, "id": task_id})
    running = task_ids(scheduler_store, bob["id"])[0]
    claim(scheduler_store, running)
    with scheduler_store.write() as session:
        session.execute(text("UPDATE task SET lease_expires_at=1 WHERE id=:id"), {"id": running})
    dispatcher = Dispatcher(settings_from_mapping({}), scheduler_store, spawn=lambda _: None)
    dispatcher.take_over()
    assert ops.get_task(scheduler_store, running)["lease_expires_at"] > time.time()
    assert set(dispatcher.last_served) == {"ana", "bob"}
    assert dispatcher.last_served["bob"] > dispatcher.last_served["ana"]
    # Nothing is released until the service has read the live workers again.
    assert dispatcher.views_stale and dispatcher.release_now() == 0


def test_a_write_transaction_holds_the_database_writer_lock_until_it_ends(
        scheduler_store: Store) -> None:
    """Another process (here another connection) cannot start writing meanwhile."""
    engine = scheduler_store.engine
    if engine.dialect.name == "sqlite":
        other = sqlite3.connect(engine.url.database, timeout=0, isolation_level=None)

        def other_may_write() -> bool:
            try:
                other.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            other.execute("ROLLBACK")
            return True
    else:
        key = writer_lock_query(engine, "scheduler").split("(")[1].rstrip(")")
        outside = create_engine(engine.url, isolation_level="AUTOCOMMIT")

        def other_may_write() -> bool:
            with outside.connect() as connection:
                taken = connection.execute(text(f"SELECT pg_try_advisory_lock({key})")).scalar()
                if taken:
                    connection.execute(text(f"SELECT pg_advisory_unlock({key})"))
                return bool(taken)
    assert other_may_write()
    with scheduler_store.write():
        assert not other_may_write()
    assert other_may_write()
