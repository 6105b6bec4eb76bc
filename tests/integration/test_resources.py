"""Resources a task asks for, on real workers: its memory is watched and its request grows."""

from tests.farm import Farm

ALLOCATE = ("import os, time; block = bytearray(150 * 1024 * 1024); "
            "print(os.environ['CORRAL_MEMORY_MB'], os.environ['CORRAL_CORES']); time.sleep(1)")


def test_task_over_its_memory_is_killed_then_retried_with_more(farm: Farm) -> None:
    farm.start(workers=1)
    job = farm.submit([{"command": ["python3", "-c", ALLOCATE]}],
                      resources={"cores": 2, "memory": "100M"},
                      retry={"max_attempts": 2, "memory_factor": 2})
    done = farm.wait_for_job(job["id"], timeout=60)
    task = farm.rpc.scheduler.get_task(done["tasks"][0]["id"])
    first, second = task["attempts"]
    assert first["state"] == "failed"
    assert first["reason"].startswith("out of memory (peak ")
    assert first["reason"].endswith("limit 100 MB)")
    assert second["state"] == "done" and second["peak_memory_mb"] >= 150
    assert task["resources"]["memory_mb"] == 200
    assert open(task["log_path"]).read().split()[:2] == ["200", "2"]
    # The worker killed only its payload: it is still here, idle.
    (worker,) = farm.rpc.registry.list_workers(alive=True)
    assert worker["state"] in ("idle", "busy")
