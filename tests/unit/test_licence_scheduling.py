"""Licences on the scheduler's side: the spec, the release pass and `why`, with no broker."""

import json
from typing import Any

import pytest

from services.scheduler import store as ops
from services.scheduler.dispatch import Candidate, IdleWorker, plan_release
from shared.db import Store
from shared.errors import InvalidSpec
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

ALL_BANDS = frozenset({"low", "normal", "high"})
HIGH_FIRST = ["high", "normal", "low"]


def plan(spec: dict[str, Any]):
    return validate_job_spec(spec, BANDS, max_env_bytes=32768, max_tasks=1000)


def submit(store: Store, tasks: int = 1, **spec: Any) -> list[int]:
    job = ops.submit_job(store, plan({"tasks": [{"command": ["true"]}] * tasks, **spec})).reply
    return [t["id"] for t in ops.get_job(store, job["id"])["tasks"]]


def workers(count: int) -> list[IdleWorker]:
    return [IdleWorker(f"w{n}", "cpu", ALL_BANDS) for n in range(count)]


# --- the spec -------------------------------------------------------------------------------------

def test_licences_come_from_the_job_unless_a_layer_or_task_names_its_own() -> None:
    job = plan({"licences": ["nuke"], "layers": [
        {"name": "comp", "command": ["nuke", "{frame}"], "frames": "1-2"},
        {"name": "sim", "command": ["hython"], "licences": {"houdini": 1, "karma": 2}},
        {"name": "free", "command": ["true"], "licences": []}]})
    assert [t.licences for t in job.tasks] == [{"nuke": 1}, {"nuke": 1},
                                               {"houdini": 1, "karma": 2}, None]


@pytest.mark.parametrize(("spec", "message"), [
    ({"tasks": [{"command": ["x"], "licences": {"houdini": 0}}]},
     "tasks[0].licences.houdini: must be a whole number >= 1, got 0"),
    ({"layers": [{"name": "a", "command": ["x"], "licences": ["bad name"]}]},
     "layers[0].licences[0]: 'bad name' is not a licence name"),
    ({"tasks": [{"command": ["x"]}], "licences": "houdini"},
     "licences: expected an object of licence name -> count or a list of licence names"),
])
def test_a_bad_licence_request_is_refused_naming_its_path(spec: dict, message: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        plan(spec)
    assert str(refused.value).startswith(message)


# --- the release pass -----------------------------------------------------------------------------

def test_a_task_goes_only_while_its_licences_are_free() -> None:
    queue = [Candidate(1, 1, "u", 50, False, licences=(("houdini", 1),)),
             Candidate(2, 1, "u", 50, False, licences=(("houdini", 1),)),
             Candidate(3, 1, "u", 50, False, licences=(("houdini", 1), ("karma", 1))),
             Candidate(4, 1, "u", 50, False, licences=(("unknown", 1),)),
             Candidate(5, 1, "u", 50, False)]
    releases = plan_release(workers(5), {("cpu", "normal"): queue}, {}, HIGH_FIRST,
                            licence_free={"houdini": 1, "karma": 3})
    # One houdini token: task 1 takes it, 2 and 3 wait; nobody has heard of "unknown";
    # a task needing no licence is not held back by any of them.
    assert [r.task_id for r in releases] == [1, 5]


def test_tasks_already_sent_hold_their_licences_until_they_start(scheduler_store: Store) -> None:
    ids = submit(scheduler_store, tasks=3, licences={"houdini": 1})
    first = ops.plan_next_releases(scheduler_store, workers(3), HIGH_FIRST,
                                   licence_free={"houdini": 2})
    assert [r.task_id for r in first] == ids[:2]
    assert json.loads(first[0].wants or "") == {"licences": {"houdini": 1}}
    ops.mark_dispatched(scheduler_store, first)
    # The licence service still says 2 free (neither worker has taken its lease yet).
    assert ops.plan_next_releases(scheduler_store, workers(3), HIGH_FIRST,
                                  licence_free={"houdini": 2}) == []
    assert ops.get_task(scheduler_store, ids[0])["licences"] == {"houdini": 1}


# --- why ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("pools", "code", "reason"), [
    (None, "licence_unavailable",
     "the licence service has not answered; tasks needing licences wait"),
    ({}, "licence_unknown", "no licence pool named houdini (corral licences set houdini N)"),
    ({"houdini": {"total": 1, "free": 1}}, "licence_too_few",
     "needs 2 houdini licences; the pool has only 1"),
    ({"houdini": {"total": 5, "free": 1}}, "licence_exhausted",
     "licence houdini exhausted (4 of 5 in use, needs 2)"),
])
def test_why_names_the_licence_a_task_waits_for(scheduler_store: Store, pools: Any, code: str,
                                                reason: str) -> None:
    (task,) = submit(scheduler_store, licences={"houdini": 2})
    why = ops.why_task(scheduler_store, task, workers(1), {}, pools)
    assert (why["code"], why["reason"]) == (code, reason)


def test_why_with_licences_free_gives_the_position_in_the_band(scheduler_store: Store) -> None:
    (task,) = submit(scheduler_store, licences={"houdini": 2})
    why = ops.why_task(scheduler_store, task, workers(1), {},
                       {"houdini": {"total": 5, "free": 5}})
    assert why["code"] == "queued"
