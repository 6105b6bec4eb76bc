"""Two processes on one service database, as two instances of a service run: each contested change
happens once (a task claimed once, a lost worker reported once, no host or licence pool
overbooked), on SQLite and on PostgreSQL.

Each instance is a real process (`python -m tests.unit.test_two_instances URL KIND NAME GO`) that
says it is ready (the file GO.NAME), waits for the file GO, so both contend from the same moment,
and prints what it won as JSON.
"""

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, text

from services.license import store as licence_ops
from services.registry import store as registry_ops
from services.resource_negotiator import store as negotiator_ops
from services.scheduler import store as scheduler_ops
from shared.db import Store, create_db_engine
from tests.farm import ROOT

ATTEMPTS = 40
ROOM = 10  # cores on the host, tokens in the pool

METADATA: dict[str, tuple[MetaData, str]] = {
    "scheduler": (scheduler_ops.SchedulerTable.metadata, "scheduler"),
    "registry": (registry_ops.RegistryTable.metadata, "registry"),
    "negotiator": (negotiator_ops.NegotiatorTable.metadata, "negotiator"),
    "licence": (licence_ops.LicenceTable.metadata, "licence"),
}


def contend(store: Store, kind: str, name: str) -> list[Any]:
    """What this instance won of the contested changes of `kind`."""
    if kind == "scheduler":
        claimed = [scheduler_ops.claim_task(store, task_id, 1, name, "host", 30).reply
                   for task_id in range(1, ATTEMPTS + 1)]
        return [reply["task_id"] for reply in claimed if reply["status"] == "claimed"]
    if kind == "registry":
        lost: list[Any] = []
        for _ in range(20):
            lost += [payload["worker_id"] for _, payload in
                     registry_ops.mark_lost_workers(store, 0.5)]
        return lost
    wanted = negotiator_ops.resources_from_wire({"cores": 1})
    won = []
    for number in range(ATTEMPTS):
        booking = f"{name}-{number}"
        if kind == "negotiator":
            if negotiator_ops.reserve(store, booking, "h", name, number, 1, wanted) is not None:
                won.append(booking)
        elif licence_ops.acquire(store, booking, number, 1, name, {"nuke": 1}) is not None:
            won.append(booking)
    return won


def prepare(store: Store, kind: str) -> None:
    """What both instances then contend for."""
    if kind == "scheduler":
        from shared.spec import validate_job_spec
        from tests.unit.conftest import BANDS

        plan = validate_job_spec({"tasks": [{"command": ["true"]}] * ATTEMPTS}, BANDS,
                                 max_env_bytes=32768, max_tasks=100000)
        scheduler_ops.submit_job(store, plan)
    elif kind == "registry":
        for number in range(ATTEMPTS):
            registry_ops.register_worker(store, f"w{number}", "h", "cpu", ["normal"], None)
        time.sleep(0.6)  # every one of them silent past the 0.5 s the instances allow
    elif kind == "negotiator":
        negotiator_ops.report_host(store, negotiator_ops.host_totals_from_wire(
            "h", ROOM, 1000, None, None))
    else:
        licence_ops.set_pool(store, "nuke", ROOM)


def open_store(url: str, kind: str) -> Store:
    metadata, tree = METADATA[kind]
    return Store(create_db_engine(url), metadata, migrations=tree)


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_two_instances_on_one_database_make_each_contested_change_once(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        new_postgres_database: Callable[[], str], database: str) -> None:
    url = (f"sqlite:///{tmp_path / 'service.db'}" if database == "sqlite"
           else new_postgres_database())
    store = open_store(url, kind)
    store.migrate()
    prepare(store, kind)
    go = tmp_path / "go"
    instances = [subprocess.Popen([sys.executable, "-m", "tests.unit.test_two_instances", url,
                                   kind, name, str(go)], cwd=ROOT, stdout=subprocess.PIPE,
                                  text=True) for name in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"go.{name}").exists() for name in ("a", "b")):
        assert time.monotonic() < deadline, "the instances did not start"
        time.sleep(0.01)
    go.touch()
    won = [json.loads(instance.communicate(timeout=120)[0]) for instance in instances]
    everything = won[0] + won[1]
    assert len(everything) == len(set(everything)), "a change was made twice"
    if kind in ("scheduler", "registry"):
        assert sorted(everything) == sorted(
            range(1, ATTEMPTS + 1) if kind == "scheduler" else
            [f"w{number}" for number in range(ATTEMPTS)])
    else:
        assert len(everything) == ROOM  # never more than the room there is
    if kind == "scheduler":
        with store.read() as session:
            attempts = session.execute(text("SELECT count(*) FROM attempt")).scalar_one()
        assert attempts == ATTEMPTS
    store.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


if __name__ == "__main__":
    url, kind, name, go = sys.argv[1:5]
    instance = open_store(url, kind)
    Path(f"{go}.{name}").touch()
    while not Path(go).exists():
        time.sleep(0.005)
    print(json.dumps(contend(instance, kind, name)))
    instance.dispose()
