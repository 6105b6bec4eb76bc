"""The scheduler outlives its own broker and database troubles without blaming the workers."""

import threading
import time
from pathlib import Path

from kombu import Connection, Queue
from sqlalchemy import create_engine, text

from services.scheduler import store as store_ops
from services.scheduler.dispatcher import Dispatcher
from shared.bands import REPORTS_QUEUE
from shared.config import settings_from_mapping
from shared.db import Store, create_db_engine
from tests.farm import AMQP_HOST, Farm
from tests.proxy import TcpProxy


def test_scheduler_cut_off_from_the_broker_past_a_lease_expires_no_lease(
        farm: Farm, tmp_path: Path) -> None:
    with TcpProxy(AMQP_HOST) as proxy:
        farm.start_service("registry")
        farm.start_service("scheduler", env={
            "CORRAL_AMQP_URI": farm.amqp_uri.replace(AMQP_HOST, proxy.address())})
        farm.start_worker()
        done_file = tmp_path / "done"
        job = farm.submit([{"command": ["sh", "-c", f"sleep 10; touch {done_file}"]}])
        farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"])["state"] == "running", 30,
                      "the task to start")
        proxy.blackhole()
        time.sleep(7)  # more than two leases (3 s) during which the scheduler hears nothing
        proxy.restore()
        done = farm.wait_for_job(job["id"], timeout=90)
        # Still inside: the scheduler reaches the broker only through the proxy.
        attempts = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])["attempts"]
    assert done["state"] == "done"
    reasons = [attempt["reason"] or "" for attempt in attempts]
    assert not [reason for reason in reasons if reason.startswith("lease expired")], reasons


def test_scheduler_on_postgresql_survives_terminated_connections(
        farm: Farm, new_postgres_database, tmp_path: Path) -> None:
    url = new_postgres_database()
    name = url.rsplit("/", 1)[1]
    farm.start_service("registry")
    scheduler = farm.start_service("scheduler", env={"CORRAL_SCHEDULER_DB": url})
    farm.start_worker()
    farm.start_worker()
    job = farm.submit([{"command": ["true"]} for _ in range(60)])
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    stop = threading.Event()

    def terminate_connections() -> None:
        with admin.connect() as connection:
            while not stop.is_set():
                connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    ":name AND pid <> pg_backend_pid()"), {"name": name})
                time.sleep(0.05)

    killer = threading.Thread(target=terminate_connections)
    killer.start()
    try:
        time.sleep(6)
    finally:
        stop.set()
        killer.join()
        admin.dispose()
    assert scheduler.poll() is None, "the scheduler died of a terminated database connection"
    done = farm.wait_for_job(job["id"], timeout=120)
    assert done["state"] == "done", done["counts"]
    assert scheduler.poll() is None
    farm.wait_for(lambda: farm.rpc.scheduler.health()["ok"], 30, "health to show no trouble")


def test_no_lease_expires_while_finish_reports_wait_unread(amqp_uri: str, tmp_path: Path) -> None:
    # After a broker restart the scheduler's report consumer reconnects on its own schedule:
    # until it does, reports of attempts that ended in time wait in the queue unread.
    settings = settings_from_mapping({"AMQP_URI": amqp_uri,
                                      "CORRAL": {"data_dir": str(tmp_path)}})
    store = Store(create_db_engine(settings.scheduler_db), store_ops.SchedulerTable.metadata,
                  migrations="scheduler")
    store.migrate()
    dispatcher = Dispatcher(settings, store, spawn=lambda function: function())
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        Queue(REPORTS_QUEUE, durable=True, channel=channel).declare()
        assert not dispatcher.may_expire_leases(dispatcher.reports_consumed())
        channel.basic_consume(REPORTS_QUEUE, callback=lambda message: None)
        assert not dispatcher.may_expire_leases(dispatcher.reports_consumed()), \
            "reports flow again: one lease of grace first"
        assert dispatcher.may_expire_leases(dispatcher.reports_consumed())
    dispatcher.side_publisher.close()
    dispatcher.publisher.close()
    store.dispose()
