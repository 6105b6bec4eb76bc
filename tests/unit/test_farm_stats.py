"""The scheduler's read-only farm figures (the monitor's chart and /metrics) and list_jobs by name."""

from services.scheduler import stats
from services.scheduler import store as ops
from shared.db import Store
from tests.unit.test_scheduler_store import claim, submit, task_ids


def finish(store: Store, task_id: int, exit_code: int, seconds: float) -> None:
    token = claim(store, task_id)["lease_token"]
    ops.finish_task(store, task_id, token, exit_code, process_started_at=100.0,
                    process_ended_at=100.0 + seconds)


def test_finished_tasks_count_in_the_current_minute_and_by_outcome(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=3)
    first, second, _third = task_ids(scheduler_store, job["id"])
    finish(scheduler_store, first, 0, 2.0)
    finish(scheduler_store, second, 1, 40.0)
    figures = stats.farm_stats(scheduler_store, minutes=60, histogram=True)
    assert figures["finished_per_minute"][-1] == 2 and sum(figures["finished_per_minute"]) == 2
    assert figures["attempts"] == {"done": 1, "failed": 1}
    assert figures["tasks"] == {"done": 1, "failed": 1, "queued": 1}
    buckets = dict((bound, count) for bound, count in figures["durations"]["buckets"])
    assert (buckets[1.0], buckets[5.0], buckets[60.0]) == (0, 1, 2)
    assert figures["durations"]["count"] == 2 and figures["durations"]["sum"] == 42.0


def test_no_histogram_unless_asked(scheduler_store: Store) -> None:
    assert "durations" not in stats.farm_stats(scheduler_store, minutes=5)
    assert stats.farm_stats(scheduler_store, minutes=5)["finished_per_minute"] == [0] * 5


def test_jobs_are_listed_by_name_glob_with_an_eta(scheduler_store: Store) -> None:
    wanted = submit(scheduler_store, name="shot010_comp")
    submit(scheduler_store, name="shot020_comp")
    listed = ops.list_jobs(scheduler_store, name_pattern="shot01*")
    assert [job["id"] for job in listed["jobs"]] == [wanted["id"]] and listed["total"] == 1
    assert "eta_seconds" in listed["jobs"][0]


def test_the_backlog_is_counted_per_pool_and_band_by_state(scheduler_store: Store) -> None:
    submit(scheduler_store, tasks=3, pool="cpu", priority=200)
    blocked = submit(scheduler_store, tasks=1, pool="cpu", priority=200)
    submit(scheduler_store, tasks=2, pool="gpu", depends_on=[blocked["id"]])
    first = task_ids(scheduler_store, blocked["id"])[0]
    claim(scheduler_store, first)
    assert "backlog" not in stats.farm_stats(scheduler_store, minutes=1)  # only when asked
    backlog = stats.farm_stats(scheduler_store, minutes=1, backlog=True)["backlog"]
    assert backlog == [
        {"pool": "cpu", "band": "high", "waiting": 0, "queued": 3, "paused": 0, "dispatched": 0},
        {"pool": "gpu", "band": "normal", "waiting": 2, "queued": 0, "paused": 0,
         "dispatched": 0}]


def test_a_job_read_for_a_grid_carries_only_the_fields_asked_for(scheduler_store: Store) -> None:
    job = submit(scheduler_store, tasks=3, env={"SECRET": "x"})
    whole = ops.get_job(scheduler_store, job["id"])
    grid = ops.get_job(scheduler_store, job["id"], task_fields=("id", "state", "progress"))
    assert grid["tasks"] == [{"id": t["id"], "state": "queued", "progress": 0}
                             for t in whole["tasks"]]
    assert grid["counts"] == whole["counts"] and grid["eta_seconds"] == whole["eta_seconds"]
    second = ops.get_job(scheduler_store, job["id"], task_limit=1, task_offset=1,
                         task_fields=("index", "name"))
    assert second["tasks"] == [{"index": 1, "name": whole["tasks"][1]["name"]}]
