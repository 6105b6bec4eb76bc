"""The license service without a broker: its events, and pools following a licence server."""

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nameko.testing.services import worker_factory

from services.license import store as ops
from services.license.service import LicenceState, LicenseService, status_commands
from shared.config import Settings, settings_from_mapping
from shared.db import Store, create_db_engine

LMSTAT = """\
lmutil - Copyright (c) 1989-2023 Flexera. All Rights Reserved.
Users of nuke_i:  (Total of 10 licenses issued;  Total of 3 licenses in use)
Users of nukex_i:  (Total of 2 licenses issued;  Total of 0 licenses in use)
"""


def settings_with(tmp_path: Path, licences: dict[str, Any]) -> Settings:
    return settings_from_mapping({"CORRAL": {"data_dir": str(tmp_path), "licences": licences}})


def fake_status_command(tmp_path: Path, output: str, exit_code: int = 0, name: str = "lmutil") -> Path:
    """An executable that prints what `output.txt` beside it holds (so a test can change it)."""
    (tmp_path / f"{name}.txt").write_text(output)
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\ncat '{tmp_path / name}.txt'\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    instance = Store(create_db_engine(f"sqlite:///{tmp_path / 'licence.db'}"),
                     ops.LicenceTable.metadata, migrations="licence")
    instance.migrate()
    yield instance
    instance.dispose()


def service(settings: Settings, store: Store) -> Any:
    return service_on(LicenceState(settings, store))


def service_on(state: LicenceState) -> Any:
    """The service's methods on `state`, with the events it sends recorded in `.sent`."""
    sent: list[tuple[str, str, dict[str, Any]]] = []
    state.announcer.dispatch = lambda *event: sent.append(event)
    worker = worker_factory(LicenseService, core=state)
    worker.sent = sent
    return worker


def reset(worker: Any) -> None:
    """Forget the events sent so far."""
    worker.core.announcer.flush()
    worker.sent.clear()


def changes(worker: Any) -> list[dict[str, Any]]:
    """The licence_changed events the service has sent (or has pending) since the last reset."""
    worker.core.announcer.flush()
    return [payload for service_name, event_type, payload in worker.sent
            if (service_name, event_type) == ("license", "licence_changed")]


def test_taking_and_returning_licences_tells_what_each_pool_has_free(tmp_path: Path,
                                                                     store: Store) -> None:
    worker = service(settings_with(tmp_path, {}), store)
    worker.set_pool("houdini", 2)
    worker.set_pool("karma", 4)
    reset(worker)

    lease = worker.acquire("t1", 1, 1, "w1", {"houdini": 1, "karma": 2})
    assert lease["licences"] == {"houdini": 1, "karma": 2}
    assert changes(worker) == [{"name": "houdini", "total": 2, "free": 1, "usable": 1},
                               {"name": "karma", "total": 4, "free": 2, "usable": 2}]

    reset(worker)
    worker.release("t1")
    worker.release("t1")  # released already: nothing changed, nothing said
    assert changes(worker) == [{"name": "houdini", "total": 2, "free": 2, "usable": 2},
                               {"name": "karma", "total": 4, "free": 4, "usable": 4}]


def test_acquire_that_does_not_fit_changes_nothing_and_says_nothing(tmp_path: Path,
                                                                    store: Store) -> None:
    worker = service(settings_with(tmp_path, {}), store)
    worker.set_pool("houdini", 1)
    reset(worker)
    assert worker.acquire("t1", 1, 1, "w1", ["houdini", "houdini"]) is None
    assert changes(worker) == []


def test_lost_worker_gives_its_leases_back(tmp_path: Path, store: Store) -> None:
    worker = service(settings_with(tmp_path, {}), store)
    worker.set_pool("nuke", 2)
    worker.acquire("t1", 1, 1, "doomed", {"nuke": 1})
    worker.acquire("t2", 2, 1, "keeper", {"nuke": 1})
    reset(worker)
    worker.handle_worker_lost({"worker_id": "doomed"})
    assert [lease["id"] for lease in ops.leases(store)] == ["t2"]
    assert changes(worker) == [{"name": "nuke", "total": 2, "free": 1, "usable": 1}]


def test_cancel_naming_its_attempt_gives_back_that_attempt_without_asking(tmp_path: Path,
                                                                          store: Store) -> None:
    worker = service(settings_with(tmp_path, {}), store)
    worker.set_pool("nuke", 2)
    worker.acquire("old", 7, 1, "w1", {"nuke": 1})
    worker.acquire("new", 7, 2, "w2", {"nuke": 1})
    worker.handle_task_cancelled({"task_id": 7, "job_id": 1, "worker_id": "w1", "attempt": 1})
    assert [lease["id"] for lease in ops.leases(store)] == ["new"]
    worker.scheduler.get_task.assert_not_called()


def test_cancelled_task_asks_the_scheduler_which_attempt_ended(tmp_path: Path,
                                                               store: Store) -> None:
    worker = service(settings_with(tmp_path, {}), store)
    worker.set_pool("nuke", 2)
    worker.acquire("old", 7, 1, "w1", {"nuke": 1})
    worker.acquire("new", 7, 2, "w2", {"nuke": 1})
    worker.scheduler.get_task.return_value = {"id": 7, "attempt": 2, "state": "running"}
    worker.handle_task_cancelled({"task_id": 7, "job_id": 1})
    assert [lease["id"] for lease in ops.leases(store)] == ["new"]


def test_cancelled_task_keeps_its_leases_when_the_scheduler_does_not_answer(tmp_path: Path,
                                                                            store: Store) -> None:
    worker = service(settings_with(tmp_path, {}), store)
    worker.set_pool("nuke", 2)
    worker.acquire("t7", 7, 1, "w1", {"nuke": 1})
    worker.scheduler.get_task.side_effect = ConnectionError("scheduler is down")
    worker.handle_task_cancelled({"task_id": 7, "job_id": 1})
    assert [lease["id"] for lease in ops.leases(store)] == ["t7"]


def test_pool_follows_its_flexlm_server_counting_only_use_outside_corral(tmp_path: Path,
                                                                        store: Store) -> None:
    lmutil = fake_status_command(tmp_path, LMSTAT)
    settings = settings_with(tmp_path, {"nuke": {"flexlm": [str(lmutil), "lmstat", "-a"],
                                                 "feature": "nuke_i", "interval": 60}})
    worker = service(settings, store)
    ops.ensure_pool(store, "nuke", 0, "flexlm")
    worker.sync_licences()
    view = ops.pool_view(store, "nuke")
    assert (view["total"], view["external_in_use"], view["free"], view["source"]) == \
        (10, 3, 7, "flexlm")
    assert changes(worker) == [{"name": "nuke", "total": 10, "free": 7, "usable": 7}]


def test_tool_running_under_a_lease_is_not_counted_twice(tmp_path: Path, store: Store) -> None:
    lmutil = fake_status_command(tmp_path, LMSTAT)
    settings = settings_with(tmp_path, {"nuke": {"flexlm": [str(lmutil)], "feature": "nuke_i"}})
    worker = service(settings, store)
    worker.set_pool("nuke", 10)
    worker.acquire("ours", 1, 1, "w1", {"nuke": 2})  # 2 of the server's 3 in use are ours
    worker.sync_licences()
    view = ops.pool_view(store, "nuke")
    assert (view["in_use"], view["external_in_use"], view["free"]) == (2, 1, 7)


def test_a_server_is_read_again_only_when_its_interval_has_passed(tmp_path: Path,
                                                                  store: Store) -> None:
    lmutil = fake_status_command(tmp_path, LMSTAT)
    settings = settings_with(tmp_path, {"nuke": {"flexlm": [str(lmutil)], "feature": "nuke_i",
                                                 "interval": 3600}})
    worker = service(settings, store)
    worker.sync_licences()
    (tmp_path / "lmutil.txt").write_text(LMSTAT.replace("Total of 10", "Total of 12"))
    worker.sync_licences()
    assert ops.pool_view(store, "nuke")["total"] == 10


def test_unchanged_counts_are_not_announced_again(tmp_path: Path, store: Store) -> None:
    lmutil = fake_status_command(tmp_path, LMSTAT)
    settings = settings_with(tmp_path, {"nuke": {"flexlm": [str(lmutil)], "feature": "nuke_i",
                                                 "interval": 0.001}})
    worker = service(settings, store)
    worker.sync_licences()
    assert len(changes(worker)) == 1
    reset(worker)
    worker.core.next_read = [0.0]
    worker.sync_licences()
    assert changes(worker) == []


@pytest.mark.parametrize("broken", ["exit code", "missing", "timeout", "no such feature"])
def test_failing_status_command_keeps_the_last_counts(tmp_path: Path, store: Store,
                                                      broken: str) -> None:
    lmutil = fake_status_command(tmp_path, LMSTAT)
    argv = [str(lmutil)]
    state = LicenceState(settings_with(tmp_path, {"nuke": {"flexlm": argv, "feature": "nuke_i"}}),
                         store)
    worker = service_on(state)
    worker.sync_licences()
    feature = "nuke_i"
    if broken == "exit code":
        argv = [str(fake_status_command(tmp_path, "Error getting status: Cannot connect\n", 1,
                                        name="down"))]
    elif broken == "missing":
        argv = [str(tmp_path / "no-such-lmutil")]
    elif broken == "timeout":
        argv = ["sleep", "5"]
    else:
        feature = "nuke_r"
    state = LicenceState(settings_with(tmp_path, {"nuke": {"flexlm": argv, "feature": feature,
                                                           "timeout": 0.5}}), store)
    worker = service_on(state)
    worker.sync_licences()  # logs, and never raises
    view = ops.pool_view(store, "nuke")
    assert (view["total"], view["external_in_use"]) == (10, 3)
    assert changes(worker) == []


def test_pools_reading_the_same_server_share_one_run_of_its_command(tmp_path: Path) -> None:
    command = ["lmutil", "lmstat", "-a", "-c", "27000@licserver"]
    settings = settings_with(tmp_path, {
        "nuke": {"flexlm": command, "feature": "nuke_i"},
        "nukex": {"flexlm": command, "feature": "nukex_i"},
        "katana": {"rlm": ["rlmutil", "rlmstat", "-a"]},
        "houdini": {"count": 4}})
    commands = status_commands(settings)
    assert [(c.source, c.argv, c.pools) for c in commands] == [
        ("rlm", ("rlmutil", "rlmstat", "-a"), (("katana", "katana"),)),
        ("flexlm", tuple(command), (("nuke", "nuke_i"), ("nukex", "nukex_i")))]
