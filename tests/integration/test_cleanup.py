"""The cleanup service on a real farm: retention measured from a job's end, kept and running jobs
untouched, nothing outside the storage root removed, results gone after collection, records
purged, old workers forgotten, the storage threshold, and `corral log --follow`."""

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from shared.errors import NotFound
from tests.farm import CONFIG, ROOT, Farm, mounted_tmpfs, wait_until


def start(farm: Farm, workers: int = 1, **env: str) -> None:
    farm.env.update({"CORRAL_CLEANUP_INTERVAL": "0.5", **env})
    farm.start_service("registry")
    farm.start_service("scheduler")
    farm.start_service("cleanup")
    for _ in range(workers):
        farm.start_worker()


def storage(farm: Farm) -> Path:
    return farm.directory / "storage"


def first_task(farm: Farm, job_id: int) -> dict[str, Any]:
    return farm.rpc.scheduler.get_job(job_id)["tasks"][0]


@pytest.fixture
def cleaned_events(amqp_uri: str) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Reads every storage_cleaned event the cleanup service has sent, from a queue of our own."""
    connection = Connection(amqp_uri)
    queue = Queue("test-storage-cleaned", Exchange("cleanup.events", type="topic", durable=True),
                  routing_key="storage_cleaned", durable=False)(connection.default_channel)
    queue.declare()
    received: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        while (message := queue.get(no_ack=True)) is not None:
            received.append(json.loads(message.body))
        return received

    yield read
    connection.release()


def test_a_finished_jobs_logs_go_after_the_delay_from_its_end_and_running_or_kept_stay(
        farm: Farm, tmp_path: Path, outside: Path,
        cleaned_events: Callable[[], list[dict[str, Any]]]) -> None:
    start(farm, workers=2, CORRAL_RETENTION_LOGS="4", CORRAL_RETENTION_SCRATCH="4")
    release = tmp_path / "release"
    running = farm.submit([{"command": wait_until(release)}], name="long")
    kept = farm.submit([{"command": ["echo", "kept"]}], name="kept", keep=True)
    # Runs 3 s, longer than nothing but shorter than its delay: measured from its start the
    # delay would be over 1 s after it ends. It also plants links to outside the storage root
    # in its scratch (kept until the job's scratch retention) and beside its own log.
    plant = (f"ln -s {outside} $CORRAL_SCRATCH/escape; "
             f"ln -s {outside}/keep.txt $CORRAL_SCRATCH/file; "
             f"ln -s {outside} $(dirname $CORRAL_RESULT)/../../logs/$CORRAL_JOB_ID/escape; "
             "echo rendered; sleep 3")
    short = farm.submit([{"command": ["sh", "-c", plant]}], name="short",
                        retention={"scratch": 4})
    farm.wait_for_job(kept["id"])
    done = farm.wait_for_job(short["id"])
    ended = time.monotonic()
    assert done["state"] == "done"
    logs = storage(farm) / "logs" / str(short["id"])
    scratch = storage(farm) / "scratch" / str(short["id"])
    assert logs.is_dir() and (scratch / f"{first_task(farm, short['id'])['id']}.1").is_dir()
    time.sleep(2.5)
    assert logs.is_dir(), "removed before its delay from the job's end was over"
    farm.wait_for(lambda: not logs.exists() and not scratch.exists(), 15,
                  "the finished job's logs and scratch to go")
    assert time.monotonic() - ended >= 3.5
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "not Corral's"
    # The kept job and the running one, both past the delay, are untouched.
    assert (storage(farm) / "logs" / str(kept["id"])).is_dir()
    assert (storage(farm) / "logs" / str(running["id"])).is_dir()
    assert farm.rpc.scheduler.get_job(running["id"], task_limit=0)["state"] == "running"
    events = farm.wait_for(lambda: [e for e in cleaned_events()
                                    if any(r["job_id"] == short["id"] for r in e["removed"])],
                           10, "a storage_cleaned event naming the job")
    removed = [r for e in events for r in e["removed"] if r["job_id"] == short["id"]]
    assert {r["kind"] for r in removed} >= {"logs", "scratch"}
    assert sum(r["bytes"] for r in removed) > 0
    release.touch()
    farm.wait_for_job(running["id"])


def test_a_stray_under_the_root_is_left_alone_and_a_dry_run_removes_nothing(
        farm: Farm, tmp_path: Path) -> None:
    start(farm, CORRAL_RETENTION_LOGS="600", CORRAL_CLEANUP_INTERVAL="3600")
    job = farm.submit([{"command": ["echo", "hello"]}])
    farm.wait_for_job(job["id"])
    (storage(farm) / "notes.txt").write_text("a wrangler's")
    plan = farm.rpc.cleanup.plan()
    assert plan["items"] == [] and plan["left_alone"] == ["notes.txt"]  # hosts/ is Corral's
    assert (storage(farm) / "hosts").is_dir()
    farm.wait_for(lambda: any(s["service"] == "cleanup" and s["alive"]
                              for s in farm.rpc.registry.farm_overview()["services"]),
                  15, "the cleanup service to report in, as the others do")
    done = subprocess.run([sys.executable, "-m", "services.cli", "cleanup", "--dry-run",
                           "--config", str(CONFIG)], env=farm.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "0 to remove; would free 0 B" in done.stdout
    assert (storage(farm) / "notes.txt").exists()
    assert (storage(farm) / "logs" / str(job["id"])).is_dir()


def test_a_dry_run_lists_what_is_due_and_its_size_then_a_pass_removes_exactly_that(
        farm: Farm) -> None:
    start(farm, CORRAL_RETENTION_LOGS="1", CORRAL_CLEANUP_INTERVAL="3600")
    job = farm.submit([{"command": ["sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x"]}])
    farm.wait_for_job(job["id"])
    plan = farm.wait_for(lambda: farm.rpc.cleanup.plan()["items"], 10, "the logs to be due")
    assert [(i["kind"], i["job_id"]) for i in plan] == [("logs", job["id"])]
    assert plan[0]["bytes"] == 5000
    assert (storage(farm) / "logs" / str(job["id"])).is_dir()  # a dry run touches nothing
    done = farm.rpc.cleanup.clean()
    assert done["bytes_freed"] == 5000 and not (storage(farm) / "logs" / str(job["id"])).exists()


def test_a_collected_result_goes_soon_after_and_an_uncollected_one_after_its_own_delay(
        farm: Farm) -> None:
    start(farm, CORRAL_RETENTION_COLLECTED="2", CORRAL_RETENTION_RESULTS="10",
          CORRAL_RETENTION_LOGS="off")
    write = "echo '{\"frames\": 10}' > $CORRAL_RESULT"
    job = farm.submit([{"command": ["sh", "-c", write]}, {"command": ["sh", "-c", write]}])
    done = farm.wait_for_job(job["id"])
    ended = time.monotonic()
    collected, other = done["tasks"]
    folder = storage(farm) / "results" / str(job["id"])
    collected_file, other_file = (folder / f"{collected['id']}.1.json",
                                  folder / f"{other['id']}.1.json")
    assert collected_file.exists() and other_file.exists()
    got = farm.rpc.scheduler.collect_result(collected["id"])
    assert got["result"] == {"frames": 10}
    farm.wait_for(lambda: not collected_file.exists(), 10, "the collected result to go")
    farm.wait_for(lambda: farm.rpc.scheduler.get_task(collected["id"])["result"] is None, 10,
                  "the scheduler to drop the collected result")
    assert other_file.exists(), "an uncollected result went with the collected one"
    assert farm.rpc.scheduler.get_task(other["id"])["result"] == {"frames": 10}
    farm.wait_for(lambda: not other_file.exists(), 20, "the uncollected result to go")
    assert time.monotonic() - ended >= 9


def test_records_of_finished_jobs_are_purged_by_the_scheduler_when_cleanup_asks(
        farm: Farm) -> None:
    start(farm, CORRAL_RETENTION_RECORDS="2")
    old = farm.submit([{"command": ["true"]}])
    kept = farm.submit([{"command": ["true"]}], keep=True)
    farm.wait_for_job(old["id"])
    farm.wait_for_job(kept["id"])

    def purged() -> bool:
        try:
            farm.rpc.scheduler.get_job(old["id"])
        except NotFound:
            return True
        return False

    farm.wait_for(purged, 20, "the finished job's record to be purged")
    assert farm.rpc.scheduler.get_job(kept["id"], task_limit=0)["state"] == "done"


def test_workers_and_hosts_gone_longer_than_the_limit_are_forgotten(farm: Farm) -> None:
    start(farm, workers=0, CORRAL_FORGET_WORKERS_AFTER="1")
    farm.start_service("resource_negotiator")
    worker = farm.start_worker("--host", "render-gone")
    farm.wait_for(lambda: farm.rpc.resource_negotiator.list_hosts(), 20, "the host to report")
    farm.kill("worker-1")
    farm.wait_for(lambda: not farm.rpc.registry.list_workers(), 30,
                  "the lost worker to be forgotten")
    assert worker
    farm.wait_for(lambda: not farm.rpc.resource_negotiator.list_hosts(), 20,
                  "its host to be forgotten")


def test_corral_log_follow_shows_lines_as_a_running_task_prints_them(
        farm: Farm, tmp_path: Path) -> None:
    start(farm)
    release = tmp_path / "release"
    script = (f"echo first line; while [ ! -e {release} ]; do sleep 0.05; done; "
              "echo second line")
    job = farm.submit([{"command": ["sh", "-c", script]}])
    task_id = farm.wait_for(lambda: (lambda t: t["id"] if t["state"] == "running" else None)(
        first_task(farm, job["id"])), 20, "the task to run")
    follower = subprocess.Popen([sys.executable, "-m", "services.cli", "log", str(task_id),
                                 "--follow", "--config", str(CONFIG)], env=farm.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "first line\n"
        assert first_task(farm, job["id"])["state"] == "running"  # shown while it runs
        release.touch()
        assert follower.stdout.readline() == "second line\n"
        assert follower.wait(30) == 0  # the follower ends when the task does
    finally:
        if follower.poll() is None:
            follower.kill()
    whole = subprocess.run([sys.executable, "-m", "services.cli", "log", str(task_id),
                            "--attempt", "1", "--config", str(CONFIG)], env=farm.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert whole.stdout == "first line\nsecond line\n"


def test_a_followed_log_that_passes_its_cap_goes_on_from_its_new_end(
        farm: Farm, tmp_path: Path) -> None:
    start(farm, CORRAL_LOG_MAX_BYTES="65536", CORRAL_LOG_HEAD_BYTES="4096")
    release = tmp_path / "release"
    script = (f"echo first line; while [ ! -e {release} ]; do sleep 0.05; done; "
              "seq 1 40000; echo last line")
    job = farm.submit([{"command": ["sh", "-c", script]}])
    task_id = farm.wait_for(lambda: (lambda t: t["id"] if t["state"] == "running" else None)(
        first_task(farm, job["id"])), 20, "the task to run")
    page = farm.wait_for(lambda: (lambda p: p if p["data"] else None)(
        farm.rpc.cleanup.read_log(task_id, None, 0)), 20, "the first line")
    assert page["data"] == "first line\n" and not page["cut"]
    release.touch()
    farm.wait_for_job(job["id"])
    # A follower that had read far into the log before it was cut is told and goes on.
    later = farm.rpc.cleanup.read_log(task_id, None, 10_000_000)
    assert later["cut"] and later["offset"] == later["size"] and later["data"] == ""
    whole = subprocess.run([sys.executable, "-m", "services.cli", "log", str(task_id),
                            "--config", str(CONFIG)], env=farm.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60).stdout
    assert whole.startswith("first line\n1\n") and whole.endswith("40000\nlast line\n")
    assert "bytes of output cut here" in whole and len(whole) <= 65536 * 3 // 2


@pytest.fixture
def small_storage(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs as the storage root, unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "storage", "20m") as root:
        yield root


def test_a_storage_root_below_the_threshold_stops_new_work_and_why_says_so_until_freed(
        farm: Farm, small_storage: Path) -> None:
    start(farm, CORRAL_STORAGE_MIN_FREE="10M")
    filler = small_storage / "filler"
    filler.write_bytes(b"\0" * 15 * 1024 * 1024)  # 5 MB left of 20
    job = farm.submit([{"command": ["echo", "hello"]}])
    task_id = first_task(farm, job["id"])["id"]
    why = farm.wait_for(lambda: (lambda w: w if w["code"] == "storage_low" else None)(
        farm.rpc.scheduler.why_task(task_id)), 20, "why to name the storage root")
    assert why["reason"].startswith("storage root has ") and why["reason"].endswith(
        "free, below 10 MB")
    time.sleep(2)
    assert first_task(farm, job["id"])["state"] in ("queued", "dispatched")
    filler.unlink()
    assert farm.wait_for_job(job["id"], 30)["state"] == "done"
    assert filler.exists() is False


def test_jobs_that_ended_before_cleanup_first_ran_are_caught_up_from_their_end(
        farm: Farm) -> None:
    farm.env.update({"CORRAL_CLEANUP_INTERVAL": "0.5", "CORRAL_RETENTION_LOGS": "1"})
    farm.start(workers=1)
    job = farm.submit([{"command": ["echo", "before cleanup"]}])
    farm.wait_for_job(job["id"])
    logs = storage(farm) / "logs" / str(job["id"])
    assert logs.is_dir()
    farm.start_service("cleanup")
    farm.wait_for(lambda: not logs.exists(), 20, "the earlier job's logs to go")
