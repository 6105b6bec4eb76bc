"""The cleanup service's logic without a broker: what is due when, a pass over a real storage
root and cleanup database, the scheduler's side (results, purging), and forgetting old workers."""

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from services.cleanup import logs
from services.cleanup import store as cleanup_ops
from services.cleanup.policy import Collected, Defaults, JobRecord, due
from services.cleanup.sweep import Sweeper
from services.registry import store as registry_ops
from services.resource_negotiator import store as negotiator_ops
from services.scheduler import retention as retention_ops
from services.scheduler import store as ops
from services.worker.scratch import attempt_scratch, storage_shortage, wait_for_room
from shared.config import DEFAULT_CONFIG_PATH, load_settings
from shared.db import Store
from shared.errors import InvalidSpec, InvalidState, NotFound, OutsideStorage
from shared.resources import HostTotals, Resources
from shared.retention import JobFinished, ResultCollected
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

DEFAULTS = Defaults(logs=100, scratch=10, results=1000, records=5000, collected=60)


def kinds_due(jobs: list[JobRecord], now: float, collected: list[Collected] = ()) -> list[str]:
    return [f"{item.kind}:{item.job_id}" for item in due(jobs, collected, DEFAULTS, now)]


# --- when things are due ---------------------------------------------------------------------

def test_retention_counts_from_the_jobs_end() -> None:
    job = JobRecord(job_id=1, user="ana", finished_at=1000.0)
    assert kinds_due([job], 1009.9) == []
    assert kinds_due([job], 1010.0) == ["scratch:1"]
    assert kinds_due([job], 1100.0) == ["scratch:1", "logs:1"]
    assert kinds_due([job], 6000.0) == ["scratch:1", "logs:1", "results:1", "records:1"]


def test_a_kept_job_has_nothing_due_ever() -> None:
    job = JobRecord(job_id=1, user="ana", finished_at=0.0, keep=True)
    collected = [Collected(task_id=5, attempt=1, job_id=1, collected_at=0.0)]
    assert kinds_due([job], 10 ** 9, collected) == []


def test_a_jobs_own_retention_beats_the_farms() -> None:
    job = JobRecord(job_id=1, user="ana", finished_at=0.0,
                    retention={"logs": 5, "scratch": "never"})
    assert kinds_due([job], 6.0) == ["logs:1"]
    assert "scratch:1" not in kinds_due([job], 10 ** 9)


def test_a_collected_result_is_due_soon_after_collection_only_once_its_job_ended() -> None:
    job = JobRecord(job_id=1, user="ana", finished_at=0.0)
    collected = [Collected(task_id=5, attempt=2, job_id=1, collected_at=30.0)]
    assert kinds_due([job], 89.0, collected) == ["scratch:1"]
    items = due([job], collected, DEFAULTS, 90.0)
    assert [(i.kind, i.path) for i in items] == [("scratch", "scratch/1"),
                                                 ("result", "results/1/5.2.json")]
    # A job running again (retried) is not among the finished: nothing of it is due.
    assert kinds_due([], 10 ** 9, collected) == []


def test_kinds_already_removed_are_not_due_again() -> None:
    job = JobRecord(job_id=1, user="ana", finished_at=0.0, removed=frozenset({"scratch"}))
    assert kinds_due([job], 50.0) == []


def test_a_spec_may_keep_a_job_or_give_its_own_retention() -> None:
    plan = validate_job_spec({"tasks": [{"command": ["true"]}], "keep": True,
                              "retention": {"logs": 3600, "scratch": "never"}},
                             BANDS, max_env_bytes=32768, max_tasks=10)
    assert plan.keep and plan.retention == {"logs": 3600, "scratch": "never"}
    with pytest.raises(InvalidSpec, match="retention.logs"):
        validate_job_spec({"tasks": [{"command": ["true"]}], "retention": {"logs": -1}},
                          BANDS, max_env_bytes=32768, max_tasks=10)
    with pytest.raises(InvalidSpec, match="retention.thumbnails"):
        validate_job_spec({"tasks": [{"command": ["true"]}], "retention": {"thumbnails": 1}},
                          BANDS, max_env_bytes=32768, max_tasks=10)


# --- a pass over a real storage root ---------------------------------------------------------

@pytest.fixture
def sweeper(cleanup_store: Store, tmp_path: Path) -> Sweeper:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={
        "CORRAL_STORAGE_ROOT": str(tmp_path / "storage"), "CORRAL_RETENTION_LOGS": "0",
        "CORRAL_RETENTION_SCRATCH": "0", "CORRAL_RETENTION_RECORDS": "off"})
    return Sweeper(settings, cleanup_store)


def finish(sweeper: Sweeper, job_id: int, **fields: Any) -> None:
    event = JobFinished(job_id=job_id, state="done", user="ana",
                        finished_at=sweeper.now() - 1, **fields)
    cleanup_ops.job_finished(sweeper.store, event, time.time())


def make_log(sweeper: Sweeper, job_id: int, text: str = "frame 1\n") -> Path:
    folder = sweeper.root / "logs" / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{job_id}0.1.log").write_text(text)
    return folder


def test_a_pass_removes_only_jobs_the_scheduler_confirms_as_over(sweeper: Sweeper) -> None:
    over, running_again = make_log(sweeper, 1), make_log(sweeper, 2)
    finish(sweeper, 1)
    finish(sweeper, 2)
    report = sweeper.run(lambda job_id: job_id == 1 or False, lambda *_: [])
    assert not over.exists() and running_again.exists()
    assert [(r["kind"], r["job_id"], r["bytes"]) for r in report.removed] == [("logs", 1, 8)]
    assert report.bytes_freed == 8


def test_a_job_that_ended_again_later_starts_its_clock_over(sweeper: Sweeper) -> None:
    folder = make_log(sweeper, 1)
    finish(sweeper, 1)
    sweeper.run(lambda job_id: sweeper.now() + 100, lambda *_: [])
    assert folder.exists()


def test_a_file_that_cannot_be_removed_is_reported_then_removed_on_a_later_pass(
        sweeper: Sweeper) -> None:
    folder = make_log(sweeper, 1)
    stuck = next(folder.iterdir())
    finish(sweeper, 1)
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        first = sweeper.run(lambda _: True, lambda *_: [])
        assert first.errors and first.removed == [] and stuck.exists()
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    second = sweeper.run(lambda _: True, lambda *_: [])
    assert second.errors == [] and not folder.exists()
    assert [r["kind"] for r in second.removed] == ["logs"]


def test_a_dry_run_lists_sizes_and_touches_nothing(sweeper: Sweeper) -> None:
    folder = make_log(sweeper, 1, "x" * 1234)
    (sweeper.root / "mine.txt").write_text("a wrangler's")
    finish(sweeper, 1)
    plan = sweeper.plan()
    assert [(i["kind"], i["bytes"]) for i in plan["items"]] == [("logs", 1234)]
    assert plan["bytes"] == 1234 and plan["left_alone"] == ["mine.txt"]
    assert folder.exists()


def test_usage_adds_up_per_job_and_per_user(sweeper: Sweeper) -> None:
    make_log(sweeper, 1, "x" * 100)
    make_log(sweeper, 2, "y" * 50)
    (sweeper.root / "results" / "2").mkdir(parents=True)
    (sweeper.root / "results" / "2" / "20.1.json").write_text("{}")
    data = sweeper.usage({1: "ana", 2: "ana"})
    assert [(j["job_id"], j["bytes"]) for j in data["jobs"]] == [(1, 100), (2, 52)]
    assert data["users"] == [{"user": "ana", "bytes": 152}]


def test_records_due_are_purged_through_the_callable_and_marked(sweeper: Sweeper,
                                                                 tmp_path: Path) -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={
        "CORRAL_STORAGE_ROOT": str(tmp_path / "storage"), "CORRAL_RETENTION_RECORDS": "0"})
    records = Sweeper(settings, sweeper.store)
    finish(records, 1)
    asked: list[tuple[float, list[int]]] = []
    report = records.run(lambda _: True, lambda before, ids: asked.append((before, ids)) or ids)
    assert [ids for _, ids in asked] == [[1]] and report.purged_jobs == [1]
    assert records.run(lambda _: True, lambda before, ids: ids).purged_jobs == []


def test_a_collected_result_is_remembered_once(cleanup_store: Store) -> None:
    event = ResultCollected(task_id=5, attempt=1, job_id=1, collected_at=10.0)
    cleanup_ops.result_collected(cleanup_store, event)
    cleanup_ops.result_collected(cleanup_store, event.model_copy(update={"collected_at": 99.0}))
    (row,) = cleanup_ops.pending_results(cleanup_store)
    assert row.collected_at == 10.0


# --- reading logs ----------------------------------------------------------------------------

def test_a_log_is_read_in_pages_and_never_through_a_link(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    (root / "logs" / "1").mkdir(parents=True)
    (root / "logs" / "1" / "10.1.log").write_text("abcdef")
    assert logs.read_page(root, "logs/1/10.1.log", 2, 3) == (b"cde", 6)
    (tmp_path / "secret").write_text("password")
    (root / "logs" / "1" / "10.2.log").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        logs.read_page(root, "logs/1/10.2.log", 0, 100)
    task = {"id": 10, "job_id": 1, "attempts": [
        {"id": 1, "number": 1, "log_path": "/etc/passwd", "state": "failed"}]}
    with pytest.raises(OutsideStorage):
        logs.log_location(root, task, logs.pick_attempt(task, 1))
    with pytest.raises(NotFound, match="no attempt 4"):
        logs.pick_attempt(task, 4)


# --- the scheduler's side ---------------------------------------------------------------------

def submit(store: Store, **spec: Any) -> dict[str, Any]:
    raw = {"tasks": [{"command": ["true"]}], **spec}
    return ops.submit_job(store, validate_job_spec(raw, BANDS, max_env_bytes=32768,
                                                   max_tasks=10)).reply


def run_to_done(store: Store, job_id: int) -> int:
    task_id = ops.get_job(store, job_id)["tasks"][0]["id"]
    claim = ops.claim_task(store, task_id, 1, "w1", "host", 5.0).reply
    ops.finish_task(store, task_id, claim["lease_token"], 0, result={"frames": 3})
    return task_id


def test_job_finished_says_when_and_what_to_keep(scheduler_store: Store) -> None:
    job = submit(scheduler_store, keep=True, retention={"logs": 60})
    task_id = ops.get_job(scheduler_store, job["id"])["tasks"][0]["id"]
    claim = ops.claim_task(scheduler_store, task_id, 1, "w1", "host", 5.0).reply
    assert claim["keep_scratch"] is True
    outcome = ops.finish_task(scheduler_store, task_id, claim["lease_token"], 0)
    (finished,) = [payload for name, payload in outcome.events if name == "job_finished"]
    event = JobFinished.model_validate(finished)
    assert event.keep and event.retention == {"logs": 60}
    assert event.finished_at == ops.get_job(scheduler_store, job["id"])["finished_at"]


def test_collecting_a_result_returns_it_and_announces_the_collection(
        scheduler_store: Store) -> None:
    job = submit(scheduler_store)
    task_id = run_to_done(scheduler_store, job["id"])
    outcome = retention_ops.collect_result(scheduler_store, task_id)
    assert outcome.reply["result"] == {"frames": 3}
    ((name, payload),) = outcome.events
    assert name == "result_collected" and ResultCollected.model_validate(payload).attempt == 1


def test_a_result_of_a_task_not_done_cannot_be_collected(scheduler_store: Store) -> None:
    job = submit(scheduler_store)
    with pytest.raises(InvalidState, match="only a done task"):
        retention_ops.collect_result(scheduler_store,
                                     ops.get_job(scheduler_store, job["id"])["tasks"][0]["id"])


def test_purge_forgets_old_finished_jobs_but_not_kept_running_or_waited_for_ones(
        scheduler_store: Store) -> None:
    old, kept, running = submit(scheduler_store), submit(scheduler_store, keep=True), \
        submit(scheduler_store)
    waited_for = submit(scheduler_store, retry={"max_attempts": 1})
    for job in (old, kept):
        run_to_done(scheduler_store, job["id"])
    # A job that failed, with another job still waiting for it.
    task_id = ops.get_job(scheduler_store, waited_for["id"])["tasks"][0]["id"]
    claim = ops.claim_task(scheduler_store, task_id, 1, "w1", "host", 5.0).reply
    ops.finish_task(scheduler_store, task_id, claim["lease_token"], 1)
    submit(scheduler_store, depends_on=[waited_for["id"]])
    later = time.time() + 10
    purged = retention_ops.purge_jobs(scheduler_store, later)["purged"]
    assert purged == [old["id"]]
    with pytest.raises(NotFound):
        ops.get_job(scheduler_store, old["id"])
    assert ops.get_job(scheduler_store, running["id"])["state"] == "queued"
    assert retention_ops.purge_jobs(scheduler_store, later, [kept["id"]])["purged"] == []


def test_purge_spares_jobs_that_ended_after_the_time_given(scheduler_store: Store) -> None:
    job = submit(scheduler_store)
    run_to_done(scheduler_store, job["id"])
    assert retention_ops.purge_jobs(scheduler_store, 0.0)["purged"] == []


# --- forgetting workers and hosts -------------------------------------------------------------

def test_workers_gone_long_ago_are_forgotten_and_live_hosts_named(registry_store: Store) -> None:
    registry_ops.register_worker(registry_store, "gone", "render01", "cpu", ["normal"], 1)
    registry_ops.register_worker(registry_store, "live", "render02", "cpu", ["normal"], 2)
    registry_ops.leave_worker(registry_store, "gone")
    assert registry_ops.forget_workers(registry_store, 3600)["forgotten"] == []
    time.sleep(0.05)
    answer = registry_ops.forget_workers(registry_store, 0.01)
    assert answer == {"forgotten": ["gone"], "live_hosts": ["render02"]}
    assert [w["worker_id"] for w in registry_ops.list_workers(registry_store)] == ["live"]


def test_hosts_silent_long_ago_are_forgotten_unless_live_or_holding(
        negotiator_store: Store) -> None:
    for host in ("old", "live", "holding"):
        negotiator_ops.report_host(negotiator_store, HostTotals(host, Resources(cores=4,
                                                                                 memory_mb=1024)))
    negotiator_ops.reserve(negotiator_store, "r1", "holding", "w1", 1, 1,
                           Resources(cores=1, memory_mb=0), None)
    time.sleep(0.05)
    assert negotiator_ops.forget_hosts(negotiator_store, 0.01, ["live"]) == ["old"]
    assert sorted(h["host"] for h in negotiator_ops.hosts(negotiator_store)) == ["holding", "live"]


# --- the worker's side: scratch and the storage wait ------------------------------------------

def test_an_attempts_scratch_is_removed_after_it_unless_kept(tmp_path: Path) -> None:
    root = tmp_path / "storage"

    async def use(claim: dict[str, Any]) -> Path:
        async with attempt_scratch(root, claim) as env:
            scratch = Path(env["CORRAL_SCRATCH"])
            (scratch / "sim.cache").write_text("x")
            (scratch / "escape").symlink_to(tmp_path)
        return scratch

    gone = asyncio.run(use({"job_id": 1, "task_id": 10, "attempt": 1}))
    assert gone == root / "scratch" / "1" / "10.1" and not gone.exists()
    kept = asyncio.run(use({"job_id": 1, "task_id": 10, "attempt": 2, "keep_scratch": True}))
    assert (kept / "sim.cache").exists() and tmp_path.is_dir()


def test_a_worker_waits_for_room_and_says_why(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    async def wait() -> str | None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        await wait_for_room(tmp_path, 10 ** 18, 0.05, stop)
        return await storage_shortage(tmp_path, 0)

    with caplog.at_level("WARNING", logger="corral.worker"):
        assert asyncio.run(wait()) is None
    assert "taking no new tasks until there is room" in caplog.text
    assert "storage root has" in caplog.text


def test_removed_results_are_dropped_from_the_scheduler_too(scheduler_store: Store) -> None:
    first, second = submit(scheduler_store), submit(scheduler_store)
    first_task, second_task = (run_to_done(scheduler_store, first["id"]),
                               run_to_done(scheduler_store, second["id"]))
    assert retention_ops.forget_results(scheduler_store, [first_task])["forgotten"] == 1
    assert ops.get_task(scheduler_store, first_task)["result"] is None
    assert ops.get_task(scheduler_store, second_task)["result"] == {"frames": 3}
    assert retention_ops.forget_results(scheduler_store, [], [second["id"]])["forgotten"] == 1
    assert ops.get_task(scheduler_store, second_task)["result"] is None


def test_a_pass_asks_the_scheduler_to_drop_the_results_it_removed(sweeper: Sweeper) -> None:
    folder = sweeper.root / "results" / "1"
    folder.mkdir(parents=True)
    (folder / "10.1.json").write_text("{}")
    finish(sweeper, 1)
    cleanup_ops.result_collected(sweeper.store, ResultCollected(
        task_id=10, attempt=1, job_id=1, collected_at=sweeper.now() - 1000))
    asked: list[tuple[list[int], list[int]]] = []
    sweeper.run(lambda _: True, lambda *_: [], lambda tasks, jobs: asked.append((tasks, jobs)))
    assert asked == [([10], [])] and not (folder / "10.1.json").exists()
