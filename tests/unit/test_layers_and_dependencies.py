"""Layers with frame ranges and chunks, and dependencies between tasks, layers and jobs."""

from typing import Any

import pytest

from services.scheduler import store as ops
from services.scheduler.dispatch import IdleWorker
from shared.db import Store
from shared.errors import InvalidSpec, InvalidState
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

ALL_BANDS = frozenset({"low", "normal", "high"})


def plan(raw: dict[str, Any]):
    return validate_job_spec(raw, BANDS, max_env_bytes=32768, max_tasks=100000)


def submit(store: Store, raw: dict[str, Any]) -> dict[str, Any]:
    return ops.get_job(store, ops.submit_job(store, plan(raw)).reply["id"])


def run(store: Store, task_id: int, exit_code: int = 0) -> None:
    task = ops.get_task(store, task_id)
    token = ops.claim_task(store, task_id, task["attempt"], "w1", "h", 30).reply["lease_token"]
    ops.finish_task(store, task_id, token, exit_code)


def states(store: Store, job_id: int) -> dict[str, str]:
    return {t["name"]: t["state"] for t in ops.get_job(store, job_id)["tasks"]}


RENDER = {"name": "render", "command": ["render", "-s", "{start}", "-e", "{end}", "-o",
                                        "out.{frame:04d}.exr"], "frames": "1-10", "chunk": 3}


def test_layer_frames_become_one_task_per_chunk_with_argv_filled() -> None:
    tasks = plan({"layers": [RENDER]}).tasks
    assert [t.name for t in tasks] == ["render.1-3", "render.4-6", "render.7-9", "render.10"]
    assert tasks[1].command == ["render", "-s", "4", "-e", "6", "-o", "out.0004.exr"]
    assert tasks[3].frames == (10,)


def test_per_frame_dependency_waits_only_for_covering_chunks() -> None:
    tasks = plan({"layers": [RENDER, {"name": "comp", "command": ["comp", "{start}"],
                                      "frames": "1-10", "chunk": 5,
                                      "depends_on": [{"layer": "render", "per_frame": True}]}]}
                 ).tasks
    comp = [t for t in tasks if t.layer == "comp"]
    assert [t.depends_on for t in comp] == [(0, 1), (1, 2, 3)]


@pytest.mark.parametrize(("raw", "message"), [
    ({"layers": [{**RENDER, "frames": "10-1x2"}]},
     "layers[0].frames: '10-1x2': step 2 goes away from 1"),
    ({"layers": [{**RENDER, "chunk": 0}]}, "layers[0].chunk:"),
    ({"layers": [{**RENDER, "depends_on": ["comp"]},
                 {"name": "comp", "command": ["c"], "depends_on": ["render"]}]},
     "layers: dependency cycle render -> comp -> render"),
    ({"layers": [{**RENDER, "depends_on": ["nope"]}]},
     "layers[0].depends_on[0]: there is no layer named 'nope'"),
    ({"layers": [RENDER, {"name": "mov", "command": ["m"],
                          "depends_on": [{"layer": "render", "per_frame": True}]}]},
     "layers[1].depends_on[0]: per_frame needs frames on both layers"),
    ({"tasks": [{"command": ["a"], "depends_on": [1]}, {"command": ["b"], "depends_on": [0]}]},
     "tasks: dependency cycle 0 -> 1 -> 0"),
    ({"tasks": [{"command": ["a"], "depends_on": [5]}]}, "tasks[0].depends_on[0]: there is no task 5"),
    ({"tasks": [{"command": ["a"]}], "layers": [RENDER]}, "tasks: give a non-empty list"),
    ({"layers": [RENDER, RENDER]}, "layers[1].name: 'render' is used twice"),
])
def test_bad_layers_and_dependencies_are_refused(raw, message) -> None:
    with pytest.raises(InvalidSpec) as refused:
        plan(raw)
    assert str(refused.value).startswith(message)


def test_task_waits_for_the_task_it_depends_on(scheduler_store: Store) -> None:
    job = submit(scheduler_store, {"tasks": [{"command": ["a"], "name": "a"},
                                             {"command": ["b"], "name": "b", "depends_on": [0]}]})
    assert states(scheduler_store, job["id"]) == {"a": "queued", "b": "waiting"}
    run(scheduler_store, job["tasks"][0]["id"])
    assert states(scheduler_store, job["id"]) == {"a": "done", "b": "queued"}


def test_frame_by_frame_chunk_starts_while_other_chunks_still_render(scheduler_store: Store) -> None:
    job = submit(scheduler_store, {"layers": [
        {**RENDER, "chunk": 1},
        {"name": "comp", "command": ["comp", "{frame}"], "frames": "1-10",
         "depends_on": [{"layer": "render", "per_frame": True}]}]})
    ids = {t["name"]: t["id"] for t in job["tasks"]}
    run(scheduler_store, ids["render.3"])
    current = states(scheduler_store, job["id"])
    assert current["comp.3"] == "queued"
    assert current["comp.4"] == "waiting" and current["render.10"] == "queued"


def test_whole_layer_dependency_waits_for_every_chunk(scheduler_store: Store) -> None:
    job = submit(scheduler_store, {"layers": [RENDER, {"name": "movie", "command": ["ffmpeg"],
                                                       "depends_on": ["render"]}]})
    ids = {t["name"]: t["id"] for t in job["tasks"]}
    for name in ["render.1-3", "render.4-6", "render.7-9"]:
        run(scheduler_store, ids[name])
        assert states(scheduler_store, job["id"])["movie"] == "waiting"
    run(scheduler_store, ids["render.10"])
    assert states(scheduler_store, job["id"])["movie"] == "queued"


def test_job_waits_for_the_job_it_depends_on(scheduler_store: Store) -> None:
    first = submit(scheduler_store, {"tasks": [{"command": ["a"]}]})
    second = submit(scheduler_store, {"depends_on": [first["id"]], "tasks": [{"command": ["b"]}]})
    assert second["tasks"][0]["state"] == "waiting"
    why = ops.why_task(scheduler_store, second["tasks"][0]["id"], [])
    assert why["code"] == "dependency" and f"job {first['id']}" in why["reason"]
    run(scheduler_store, first["tasks"][0]["id"])
    assert ops.get_task(scheduler_store, second["tasks"][0]["id"])["state"] == "queued"


def test_dependency_on_a_missing_job_is_refused_and_nothing_stored(scheduler_store: Store) -> None:
    with pytest.raises(InvalidSpec, match=r"depends_on\[0\]: job 404 does not exist"):
        submit(scheduler_store, {"depends_on": [404], "tasks": [{"command": ["b"]}]})
    assert ops.list_jobs(scheduler_store)["total"] == 0


def test_failed_dependency_blocks_dependents_until_it_is_retried(scheduler_store: Store) -> None:
    job = submit(scheduler_store, {"tasks": [{"command": ["a"], "name": "a"},
                                             {"command": ["b"], "name": "b", "depends_on": [0]}]})
    a, b = (t["id"] for t in job["tasks"])
    run(scheduler_store, a, exit_code=1)
    assert ops.get_job(scheduler_store, job["id"])["state"] == "failed"
    blocked = ops.get_task(scheduler_store, b)
    assert blocked["state"] == "waiting" and "is failed" in blocked["reason"]
    ops.retry_task(scheduler_store, a)
    assert ops.get_job(scheduler_store, job["id"])["state"] == "running"
    run(scheduler_store, a)
    assert ops.get_task(scheduler_store, b)["state"] == "queued"
    run(scheduler_store, b)
    assert ops.get_job(scheduler_store, job["id"])["state"] == "done"


def test_only_failed_or_cancelled_tasks_can_be_retried(scheduler_store: Store) -> None:
    job = submit(scheduler_store, {"tasks": [{"command": ["a"]}]})
    with pytest.raises(InvalidState):
        ops.retry_task(scheduler_store, job["tasks"][0]["id"])


def test_why_names_the_missing_worker_or_the_queue_position(scheduler_store: Store) -> None:
    job = submit(scheduler_store, {"priority": 500, "tasks": [{"command": ["a"]}] * 3})
    last = job["tasks"][2]["id"]
    assert ops.why_task(scheduler_store, last, [])["reason"] == \
        "no worker serves pool cpu, band high"
    why = ops.why_task(scheduler_store, last, [IdleWorker("w1", "cpu", ALL_BANDS)])
    assert (why["code"], why["position"]) == ("queued", 3)


def test_a_layer_can_run_in_its_own_pool(scheduler_store: Store) -> None:
    job = submit(scheduler_store, {"pool": "cpu", "layers": [
        {**RENDER, "pool": "gpu"}, {"name": "movie", "command": ["ffmpeg"],
                                    "depends_on": ["render"]}]})
    assert {t["name"]: t["pool"] for t in job["tasks"]}["render.1-3"] == "gpu"
    assert {t["name"]: t["pool"] for t in job["tasks"]}["movie"] == "cpu"
