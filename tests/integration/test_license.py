"""The license service on the real broker: pools run out and fill again, a lost worker's leases come
back, pools follow a licence server's status output, and `corral licences` manages them."""

import json
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue

from shared import events
from shared.errors import NotFound
from tests.farm import CONFIG, ROOT, Farm

LMSTAT = """\
lmutil - Copyright (c) 1989-2023 Flexera. All Rights Reserved.
Flexible License Manager status on Thu 1/11/2024 09:41
License server status: 27000@licserver
Feature usage info:

Users of nuke_i:  (Total of {issued} licenses issued;  Total of {in_use} licenses in use)

Users of hiero_i:  (Error: 1 licenses, unsupported by licensed server)
"""


@contextmanager
def licence_changes(farm: Farm) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Listen to the license service's licence_changed events; call the result for those so far."""
    exchange = Exchange("license.events", type="topic", durable=True)
    with Connection(farm.amqp_uri) as connection:
        queue = Queue(f"test-licence-changes-{uuid.uuid4().hex[:8]}", exchange=exchange,
                      routing_key=events.LICENCE_CHANGED, exclusive=True)(connection.channel())
        queue.declare()
        seen: list[dict[str, Any]] = []

        def received() -> list[dict[str, Any]]:
            while (message := queue.get(no_ack=True)) is not None:
                seen.append(message.payload)
            return seen

        yield received


def test_pool_runs_out_and_a_release_frees_it_and_says_so(farm: Farm) -> None:
    farm.start_service("license")
    license_rpc = farm.rpc.license
    with licence_changes(farm) as changes:
        pool = license_rpc.set_pool("houdini", 2)
        assert (pool["total"], pool["free"]) == (2, 2)
        first = license_rpc.acquire("task-1-attempt-1", 1, 1, "w1", {"houdini": 1})
        assert first["licences"] == {"houdini": 1}
        assert license_rpc.acquire("task-2-attempt-1", 2, 1, "w1", {"houdini": 1}) is not None
        assert license_rpc.acquire("task-3-attempt-1", 3, 1, "w1", {"houdini": 1}) is None
        assert license_rpc.get_pool("houdini")["free"] == 0

        assert license_rpc.release("task-1-attempt-1") == first
        assert license_rpc.release("task-1-attempt-1") is None
        assert license_rpc.get_pool("houdini")["free"] == 1
        farm.wait_for(lambda: len(changes()) >= 4, 10, "the release's licence_changed event")
        assert changes() == [{"name": "houdini", "total": 2, "free": free, "usable": free}
                             for free in (2, 1, 0, 1)]
    assert license_rpc.acquire("task-3-attempt-1", 3, 1, "w1", {"houdini": 1}) is not None


def test_acquire_of_a_licence_nobody_declared_is_refused_naming_it(farm: Farm) -> None:
    farm.start_service("license")
    try:
        farm.rpc.license.acquire("task-1-attempt-1", 1, 1, "w1", {"renderman": 1})
    except NotFound as exc:
        assert "'renderman'" in str(exc)
    else:
        raise AssertionError("a licence without a pool was granted")


def test_leases_of_a_killed_worker_are_released_once_the_registry_gives_up_on_it(
        farm: Farm) -> None:
    farm.start(workers=0)
    farm.start_service("license")
    license_rpc = farm.rpc.license
    license_rpc.set_pool("nuke", 2)
    doomed = farm.start_worker(name="doomed")
    assert license_rpc.acquire("task-1-attempt-1", 1, 1, doomed, {"nuke": 2}) is not None
    assert license_rpc.get_pool("nuke")["free"] == 0

    farm.kill("doomed", signal.SIGKILL)
    farm.wait_for(lambda: license_rpc.get_pool("nuke")["free"] == 2, 30,
                  "the killed worker's licence lease to be released")
    states = {w["worker_id"]: w["state"] for w in farm.rpc.registry.list_workers()}
    assert states[doomed] == "lost"
    assert license_rpc.get_pool("nuke")["holders"] == []


def fake_lmutil(directory: Path, issued: int, in_use: int) -> Path:
    """An `lmutil` that prints what lmstat.txt beside it says, so the test can change it."""
    (directory / "lmstat.txt").write_text(LMSTAT.format(issued=issued, in_use=in_use))
    script = directory / "lmutil"
    script.write_text(f"#!/bin/sh\ncat '{directory / 'lmstat.txt'}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_pools_from_config_exist_and_follow_their_licence_server(farm: Farm,
                                                                 tmp_path: Path) -> None:
    lmutil = fake_lmutil(tmp_path, issued=10, in_use=3)
    farm.env["CORRAL_LICENCES"] = json.dumps({
        "houdini": {"count": 3},
        "nuke": {"flexlm": [str(lmutil), "lmstat", "-a"], "feature": "nuke_i", "interval": 1}})
    farm.start_service("license")
    license_rpc = farm.rpc.license
    houdini = license_rpc.get_pool("houdini")
    assert (houdini["total"], houdini["free"], houdini["source"]) == (3, 3, "manual")

    def nuke() -> tuple[int, int, int, int]:
        pool = license_rpc.get_pool("nuke")
        return pool["total"], pool["in_use"], pool["external_in_use"], pool["free"]

    farm.wait_for(lambda: nuke() == (10, 0, 3, 7), 20, "the first reading of the licence server")
    assert license_rpc.get_pool("nuke")["source"] == "flexlm"

    # Two of ours start their tools: the server now counts them too, and they are not counted twice.
    license_rpc.acquire("task-1-attempt-1", 1, 1, "w1", {"nuke": 2})
    (tmp_path / "lmstat.txt").write_text(LMSTAT.format(issued=10, in_use=5))
    farm.wait_for(lambda: nuke() == (10, 2, 3, 5), 20, "the server's count with our two tools")

    # An artist opens two more sessions, and the studio buys two more licences.
    (tmp_path / "lmstat.txt").write_text(LMSTAT.format(issued=12, in_use=7))
    farm.wait_for(lambda: nuke() == (12, 2, 5, 5), 20, "the server's new counts")

    # The server stops answering: the pool keeps its last counts.
    lmutil.write_text("#!/bin/sh\necho 'Cannot connect to license server system.' >&2\nexit 1\n")
    farm.wait_for(lambda: "keeping the last counts of nuke" in (tmp_path / "license.log").read_text(), 20,
                  "the failed reading to be logged")
    assert nuke() == (12, 2, 5, 5)


def test_count_set_by_rpc_is_kept_when_the_service_restarts(farm: Farm) -> None:
    farm.env["CORRAL_LICENCES"] = json.dumps({"houdini": {"count": 3}})
    farm.start_service("license")
    farm.rpc.license.set_pool("houdini", 5)
    farm.kill("license", signal.SIGKILL)
    farm.start_service("license")
    assert farm.rpc.license.get_pool("houdini")["total"] == 5


def corral(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args],
                          env={**farm.env, "CORRAL_CONFIG": str(CONFIG)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_corral_licences_sets_lists_and_removes_pools(farm: Farm) -> None:
    farm.start_service("license")
    done = corral(farm, "licences", "set", "houdini", "4")
    assert done.returncode == 0, done.stderr
    assert "houdini: 4 (4 free)" in done.stdout
    farm.rpc.license.acquire("task-1-attempt-1", 1, 1, "w1", {"houdini": 1})

    listing = json.loads(corral(farm, "licences", "--json").stdout)
    assert [(p["name"], p["total"], p["in_use"], p["free"]) for p in listing] == \
        [("houdini", 4, 1, 3)]
    table = corral(farm, "licences").stdout
    assert "houdini" in table and "manual" in table

    held = corral(farm, "licences", "remove", "houdini")
    assert held.returncode == 1 and "held by 1 lease" in held.stderr
    farm.rpc.license.release("task-1-attempt-1")
    assert corral(farm, "licences", "remove", "houdini").returncode == 0
    assert json.loads(corral(farm, "licences", "--json").stdout) == []
    again = corral(farm, "licences", "remove", "houdini")
    assert again.returncode == 1 and "no licence pool named 'houdini'" in again.stderr

    bad = corral(farm, "licences", "set", "two words", "1")
    assert bad.returncode == 1 and "'two words' is not a licence name" in bad.stderr


def test_corral_licences_shows_per_host_pools_and_seats_held_for_a_workers_life(
        farm: Farm) -> None:
    farm.start_service("license")
    done = corral(farm, "licences", "set", "redshift", "2", "--per-host")
    assert done.returncode == 0, done.stderr
    corral(farm, "licences", "set", "pixyz", "1")
    farm.rpc.license.acquire("task-1-attempt-1", 1, 1, "w1", {"redshift": 1}, "node-a")
    farm.rpc.license.acquire("task-2-attempt-1", 2, 1, "w2", {"redshift": 1}, "node-a")
    farm.rpc.license.hold_for_worker("held by w3", "w3", "node-b", ["pixyz"])

    listing = {p["name"]: p for p in json.loads(corral(farm, "licences", "--json").stdout)}
    assert (listing["redshift"]["per_host"], listing["redshift"]["in_use"],
            listing["redshift"]["hosts"]) == (True, 1, ["node-a"])
    assert [(h["worker_id"], h["lifetime"]) for h in listing["pixyz"]["holders"]] == \
        [("w3", True)]
    table = corral(farm, "licences").stdout
    assert "redshift: seats held on node-a" in table
    assert "pixyz: held for life by w3" in table
    rows = {line.split()[1]: line.split()[-2] for line in table.splitlines()
            if line.startswith("│") and line.split()[1] in ("redshift", "pixyz")}
    assert rows == {"redshift": "host", "pixyz": "task"}
