"""A payload's output costs the worker no memory, however it prints; progress is still read."""

import asyncio
import os
import sys
from pathlib import Path

import psutil

from services.worker.process import Supervisors, TaskRun

PRINTED_MB = 200


def run_of(tmp_path: Path, command: list[str]) -> TaskRun:
    return TaskRun(task_id=1, job_id=1, attempt=1, command=command, shell=False, env={},
                   cwd=None, timeout=60, log_path=tmp_path / "task.log",
                   result_path=tmp_path / "result.json", marker="test.1.1")


def test_progress_bar_without_newlines_keeps_the_worker_small(tmp_path: Path) -> None:
    # A progress bar redrawn with \r: hundreds of megabytes and not one newline.
    script = ("import sys\nbar = ('#' * 1000 + '\\r').encode()\n"
              f"for i in range({PRINTED_MB} * 1000):\n"
              "    sys.stdout.buffer.write(bar)\n"
              "sys.stdout.buffer.write(b'CORRAL_PROGRESS 77\\r')\n")
    run = run_of(tmp_path, [sys.executable, "-c", script])
    me = psutil.Process(os.getpid())
    peak = [me.memory_info().rss]

    async def watch() -> None:
        supervisors = Supervisors()
        running = asyncio.create_task(run.run(dict(os.environ), 4096, supervisors))
        while not running.done():
            run.scan_progress()  # what the renew loop does every heartbeat
            peak.append(me.memory_info().rss)
            await asyncio.sleep(0.05)
        await running
        await supervisors.close()

    start = peak[0]
    asyncio.run(watch())
    assert run.exit_code == 0
    assert (tmp_path / "task.log").stat().st_size > PRINTED_MB * 1_000_000
    assert run.progress == 77
    assert (max(peak) - start) / 1e6 < 40, f"grew {(max(peak) - start) / 1e6:.0f} MB"


def test_payload_that_cannot_write_its_log_fails_with_the_reason(tmp_path: Path) -> None:
    blocked = tmp_path / "logs"
    blocked.write_text("a file where the log folder should be")
    run = run_of(tmp_path, ["true"])
    run.log_path = blocked / "task.log"
    asyncio.run(run.run(dict(os.environ), 4096, Supervisors()))
    assert run.exit_code is None
    assert run.reason is not None and run.reason.startswith("could not write the log:")


def test_payload_whose_argv_cannot_be_executed_fails_with_the_reason(tmp_path: Path) -> None:
    run = run_of(tmp_path, ["echo", "a\x00b"])
    asyncio.run(run.run(dict(os.environ), 4096, Supervisors()))
    assert run.reason is not None and run.reason.startswith("could not start 'echo'")
