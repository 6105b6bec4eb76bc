"""The dispatch path end to end on the real broker: submit, release, claim, run, finish."""

import json
import time
from pathlib import Path

import pytest
from kombu import Connection

from shared.errors import InvalidSpec
from tests.farm import Farm


def completions(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_fifty_task_job_runs_every_task_once_and_records_everything(farm: Farm,
                                                                    tmp_path: Path) -> None:
    farm.start(workers=2)
    ledger = tmp_path / "ledger"
    script = ('echo "frame $CORRAL_TASK_ID"; echo CORRAL_PROGRESS 50; '
              'echo "$CORRAL_TASK_ID" >> ' + str(ledger) + '; '
              'printf \'{"frame": %s}\' "$CORRAL_TASK_ID" > "$CORRAL_RESULT"')
    job = farm.submit([{"command": ["sh", "-c", script]} for _ in range(50)], name="fifty")
    done = farm.wait_for_job(job["id"], timeout=120)
    assert done["state"] == "done" and done["counts"] == {"done": 50}
    ids = sorted(t["id"] for t in done["tasks"])
    assert sorted(map(int, completions(ledger))) == ids  # every task ran, none twice
    for summary in done["tasks"]:
        task = farm.rpc.scheduler.get_task(summary["id"])
        assert task["exit_code"] == 0 and task["result"] == {"frame": task["id"]}
        assert task["progress"] == 100
        (attempt,) = task["attempts"]
        assert attempt["state"] == "done"
        assert attempt["process_started_at"] <= attempt["process_ended_at"]
        assert Path(task["log_path"]).read_text().startswith(f"frame {task['id']}")


def test_failing_task_is_retried_by_its_policy_then_fails_with_reason(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["sh", "-c", "echo 'cannot open scene'; exit 4"]}],
                      retry={"max_attempts": 3, "delay_seconds": 0.2})
    done = farm.wait_for_job(job["id"])
    task = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])
    assert done["state"] == "failed" and task["state"] == "failed"
    assert task["reason"] == "exited with code 4"
    assert "cannot open scene" in task["log_tail"]
    assert [a["state"] for a in task["attempts"]] == ["failed"] * 3


def test_task_over_its_time_limit_is_killed_and_says_so(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["sleep", "30"], "timeout": 0.5}])
    done = farm.wait_for_job(job["id"])
    assert done["tasks"][0]["reason"] == "timed out after 0.5 s"


def test_message_is_acknowledged_while_its_task_runs(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["sleep", "4"]}])
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"])["state"] == "running", 20,
                  "the task to start")
    assert farm.queue_counts()["corral.cpu.normal"] == (0, 0)
    farm.wait_for_job(job["id"])


def test_duplicated_message_starts_nothing(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=1)
    ledger = tmp_path / "ledger"
    job = farm.submit([{"command": ["sh", "-c", f"echo ran >> {ledger}"]}])
    done = farm.wait_for_job(job["id"])
    task_id = done["tasks"][0]["id"]
    with Connection(farm.amqp_uri) as connection:
        producer = connection.Producer()
        for _ in range(2):  # the same message again, twice
            producer.publish(json.dumps({"task_id": task_id, "attempt": 1}),
                             routing_key="corral.cpu.normal", content_type="application/json")
    farm.wait_for(lambda: farm.queue_counts()["corral.cpu.normal"] == (0, 0), 20,
                  "the duplicates to be consumed")
    task = farm.rpc.scheduler.get_task(task_id)
    assert len(task["attempts"]) == 1 and completions(ledger) == ["ran"]


def test_cancel_kills_the_running_process(farm: Farm, tmp_path: Path) -> None:
    farm.start(workers=1)
    marker = tmp_path / "finished"
    job = farm.submit([{"command": ["sh", "-c", f"sleep 20; touch {marker}"]}])
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"])["state"] == "running", 20,
                  "the task to start")
    farm.rpc.scheduler.cancel_job(job["id"])
    farm.wait_for(lambda: farm.rpc.registry.list_workers(alive=True)[0]["state"] == "idle", 10,
                  "the worker to be idle again")
    assert farm.rpc.scheduler.get_job(job["id"])["state"] == "cancelled"
    assert not marker.exists()


@pytest.mark.parametrize(("spec", "field"), [
    ({"tasks": [{"name": "no command"}]}, "tasks[0].command"),
    ({"tasks": [{"command": "blender -b scene.blend"}]}, "tasks[0].command"),
    ({"tasks": [{"command": ["blender", 42]}]}, "tasks[0].command[1]"),
    ({"priority": 5000, "tasks": [{"command": ["true"]}]}, "priority"),
    ({"tasks": [{"command": ["true"], "timeout": -5}]}, "tasks[0].timeout"),
    ({"tasks": [{"command": ["true"]}], "frames_per_second": 24}, "frames_per_second"),
    ({"env": {"BIG": "x" * 100_000}, "tasks": [{"command": ["true"]}]}, "env"),
])
def test_bad_spec_is_refused_naming_the_field_and_nothing_is_stored(farm: Farm, spec,
                                                                     field) -> None:
    farm.start_service("scheduler")
    with pytest.raises(InvalidSpec) as refused:
        farm.rpc.scheduler.submit_job(spec)
    assert str(refused.value).startswith(f"{field}:")
    assert farm.rpc.scheduler.list_jobs()["total"] == 0


def test_missing_program_fails_with_a_clear_reason(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["no-such-renderer", "-f", "1"]}])
    done = farm.wait_for_job(job["id"])
    assert done["tasks"][0]["reason"] == "could not start 'no-such-renderer': no such executable"


def test_frame_by_frame_chunk_starts_while_an_upstream_chunk_still_runs(farm: Farm) -> None:
    farm.start(workers=2)
    slow_last = "if [ {frame} = 10 ]; then sleep 6; fi"
    job = farm.rpc.scheduler.submit_job({"layers": [
        {"name": "render", "command": [slow_last], "shell": True, "frames": "1-10"},
        {"name": "comp", "command": ["true"], "frames": "1-10",
         "depends_on": [{"layer": "render", "per_frame": True}]}]})
    done = farm.wait_for_job(job["id"], timeout=90)
    assert done["state"] == "done"
    attempts = {t["name"]: farm.rpc.scheduler.get_task(t["id"])["attempts"][-1]
                for t in done["tasks"]}
    assert attempts["comp.3"]["process_started_at"] < attempts["render.10"]["process_ended_at"]
    assert attempts["comp.10"]["process_started_at"] >= attempts["render.10"]["process_ended_at"]


def test_why_explains_a_waiting_and_a_queued_task(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.rpc.scheduler.submit_job({"tasks": [
        {"command": ["sleep", "3"], "name": "first"},
        {"command": ["true"], "name": "second", "depends_on": [0]},
        {"command": ["true"], "name": "third"}]})
    farm.wait_for(lambda: farm.rpc.scheduler.get_job(job["id"], task_limit=0)["state"] ==
                  "running", 20, "the job to start")
    first, second, third = (t["id"] for t in farm.rpc.scheduler.get_job(job["id"])["tasks"])
    assert farm.rpc.scheduler.why_task(second)["code"] == "dependency"
    assert f"task {first} (first)" in farm.rpc.scheduler.why_task(second)["reason"]
    assert farm.rpc.scheduler.why_task(third)["code"] == "queued"
    assert farm.rpc.scheduler.why_task(first)["code"] == "running"
    assert farm.wait_for_job(job["id"])["state"] == "done"


def test_task_silent_past_its_stall_timeout_is_killed_as_stalled(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["sh", "-c", "echo starting; sleep 30"], "stall_timeout": 1}])
    done = farm.wait_for_job(job["id"], timeout=30)
    assert done["tasks"][0]["reason"] == "stalled: no output for 1 s"


def test_host_that_keeps_failing_a_job_is_excluded_from_it(farm: Farm) -> None:
    farm.start(workers=1)  # one host: once it is excluded, nothing else may run the job
    job = farm.submit([{"command": ["false"]} for _ in range(3)], max_host_failures=2,
                      retry={"max_attempts": 3})
    task_ids = [t["id"] for t in farm.rpc.scheduler.get_job(job["id"])["tasks"]]
    farm.wait_for(lambda: sum(len(farm.rpc.scheduler.get_task(t)["attempts"])
                              for t in task_ids) >= 2, 30, "two failed attempts")
    time.sleep(2)
    attempts = [a for t in task_ids for a in farm.rpc.scheduler.get_task(t)["attempts"]]
    assert len(attempts) == 2  # the host failed twice: it takes no third attempt
    # No other host serves the job, so it ends failed saying why rather than waiting for ever.
    done = farm.wait_for_job(job["id"], timeout=30)
    assert done["state"] == "failed"
    why = farm.rpc.scheduler.why_task(task_ids[-1])
    assert why["state"] == "failed"
    assert "is excluded from this job after 2 failures" in why["reason"]
