"""A payload's output costs the worker no memory, however it prints; progress is still read."""

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import psutil

from services.worker.process import Supervisors, TaskRun
from tests.farm import mounted_tmpfs

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


def test_a_log_past_its_cap_keeps_its_head_its_latest_output_and_says_what_was_cut(
        tmp_path: Path) -> None:
    lines = 400_000  # about 9 MB of numbered lines against a 1 MiB cap
    script = (f"import sys\nfor i in range({lines}):\n"
              "    sys.stdout.write(f'line {i:07d} of the render\\n')\n"
              "    if i % 100000 == 0: sys.stdout.write(f'CORRAL_PROGRESS {i // 4000}\\n')\n"
              "sys.stdout.write('CORRAL_PROGRESS 99\\nthe last line\\n')\n")
    run = run_of(tmp_path, [sys.executable, "-c", script])
    run.log_max_bytes, run.log_head_bytes = 1 << 20, 1 << 16
    asyncio.run(run.run(dict(os.environ), 4096, Supervisors()))
    assert run.exit_code == 0 and run.reason is None
    log = (tmp_path / "task.log").read_bytes()
    assert len(log) <= (1 << 20) * 3 // 2
    assert log.startswith(b"line 0000000 of the render\n")
    assert log.endswith(b"CORRAL_PROGRESS 99\nthe last line\n")
    head, rest = log[:1 << 16], log[1 << 16:]
    marker, kept = rest.split(b"]\n", 1)
    assert marker.startswith(b"\n[corral: ") and b"(log_max_bytes)" in marker
    cut = int(marker.split()[1])
    printed = sum(len(f"line {i:07d} of the render\n") for i in range(lines)) + \
        sum(len(f"CORRAL_PROGRESS {i // 4000}\n") for i in range(0, lines, 100000)) + \
        len("CORRAL_PROGRESS 99\nthe last line\n")
    assert len(head) + cut + len(kept) == printed  # every byte is kept or counted as cut
    assert kept.startswith(b"line ")  # the kept part begins at a line's start
    assert run.progress == 99 and "the last line" in (run.log_tail or "")


def test_a_log_that_cannot_be_written_while_running_fails_the_attempt_saying_so(
        tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        fill = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # until the disk is full
            while os.write(fill, b"x" * 4096):
                pass
        os.close(fill)
        run = run_of(disk, [sys.executable, "-c", "print('x' * 200_000)\n"
                                                  "import time; time.sleep(60)"])
        run.log_max_bytes, run.log_head_bytes = 1 << 20, 1 << 16
        asyncio.run(run.run(dict(os.environ), 4096, Supervisors()))
    assert run.reason == "could not write the log: no space left on device"
