"""Runs one task payload: argv in its own process group, output to a log file, progress, result."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PROGRESS_LINE = re.compile(rb"^CORRAL_PROGRESS\s+(\d{1,3}(?:\.\d+)?)\s*$", re.MULTILINE)
MAX_RESULT_BYTES = 1 << 20
SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_worker() -> None:
    """In the child: be killed if the worker dies, so a lost worker leaves no payload running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the lease still fences the task
        pass


@dataclass
class TaskRun:
    """What the worker knows of a claimed task, and what running it produced."""

    task_id: int
    job_id: int
    attempt: int
    command: list[str]
    shell: bool
    env: dict[str, str]
    cwd: str | None
    timeout: float | None
    log_path: Path
    result_path: Path
    stall_timeout: float | None = None
    nice: int | None = None
    memory_limit_mb: int | None = None
    memory_headroom: float = 1.0
    cores: float | None = None
    gpu_indices: tuple[int, ...] | None = None
    progress: int = 0
    peak_memory_mb: int = 0
    exit_code: int | None = None
    reason: str | None = None
    result: Any = None
    log_tail: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    pid: int | None = None
    _scanned: int = field(default=0, repr=False)
    _process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _kill_reason: str | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.command[0]] if self.shell else list(self.command)

    def _spawn_argv(self) -> tuple[list[str], Any]:
        """The argv to exec, and a preexec_fn if one is needed, so the payload dies with us.

        util-linux's setpriv sets the parent-death signal and execs the payload; spawning it
        keeps Python's fast vfork path (about 1 ms here against 2 ms for a preexec_fn).
        """
        # The payload alone runs at its nice level; the worker stays responsive to heartbeats.
        niced = ["nice", "-n", str(self.nice)] if self.nice else []
        if SETPRIV:
            return [SETPRIV, "--pdeathsig", "KILL", "--", *niced, *self.argv()], None
        return [*niced, *self.argv()], _die_with_worker

    def scan_progress(self) -> int:
        """Read the log written since the last scan for `CORRAL_PROGRESS n` lines."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._scanned)
                chunk = log.read()
        except OSError:
            return self.progress
        cut = chunk.rfind(b"\n") + 1  # only whole lines; a partial one is read next time
        for match in PROGRESS_LINE.finditer(chunk[:cut]):
            self.progress = max(0, min(100, int(float(match.group(1)))))
        self._scanned += cut
        return self.progress

    def kill(self, reason: str) -> None:
        """Kill the whole process group now; `reason` becomes the attempt's failure reason."""
        self._kill_reason = self._kill_reason or reason
        if self._process is not None and self._process.returncode is None:
            _kill_group(self._process.pid, signal.SIGKILL)

    async def run(self, base_env: dict[str, str], log_tail_bytes: int) -> None:
        """Start the process, wait for it (or its time limit), then collect result and log tail."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.unlink(missing_ok=True)
        env = {**base_env, **self.env, "CORRAL_TASK_ID": str(self.task_id),
               "CORRAL_JOB_ID": str(self.job_id), "CORRAL_ATTEMPT": str(self.attempt),
               "CORRAL_RESULT": str(self.result_path)}
        if self.cores:
            env["CORRAL_CORES"] = f"{self.cores:g}"
        if self.memory_limit_mb:
            env["CORRAL_MEMORY_MB"] = str(self.memory_limit_mb)
        if self.gpu_indices is not None:
            # Pinned to the granted GPUs only: a task that was granted none sees none.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in self.gpu_indices)
        # Local stat and open calls take microseconds: not worth a thread hop on the hot path.
        if self.cwd is not None and not os.path.isdir(self.cwd):  # noqa: ASYNC240
            self.reason = f"working directory {self.cwd} does not exist"
            return
        program = self.argv()[0]
        if shutil.which(program, path=env.get("PATH")) is None and not (
                "/" not in program and self.cwd and os.access(os.path.join(self.cwd, program),
                                                              os.X_OK)):
            self.reason = f"could not start {program!r}: no such executable"
            self._note(self.reason)
            return
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230
            try:
                argv, preexec = self._spawn_argv()
                self._process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, env=env, cwd=self.cwd,
                    start_new_session=True, preexec_fn=preexec)
            except (FileNotFoundError, PermissionError, OSError) as exc:
                self.reason = f"could not start {self.argv()[0]!r}: {exc.strerror or exc}"
                log.write(f"corral: {self.reason}\n".encode())
                return
        self.started_at = time.time()
        self.pid = self._process.pid
        watch = asyncio.create_task(self._watch_for_stall()) if self.stall_timeout else None
        memory = asyncio.create_task(self._watch_memory())
        try:
            await asyncio.wait_for(self._process.wait(), self.timeout)
        except TimeoutError:
            self.kill(f"timed out after {self.timeout:g} s")
            await self._process.wait()
        finally:
            if watch is not None:
                watch.cancel()
            memory.cancel()
            # Whatever the payload left behind in its group goes with it.
            _kill_group(self._process.pid, signal.SIGKILL)
        self.ended_at = time.time()
        self.exit_code = self._process.returncode
        if self._kill_reason:
            self.reason = self._kill_reason
        elif self.exit_code is not None and self.exit_code < 0:
            self.reason = f"killed by signal {signal.Signals(-self.exit_code).name}"
        self.scan_progress()
        self.result = self._read_result()
        self.log_tail = self._read_tail(log_tail_bytes)

    async def _watch_memory(self) -> None:
        """Sample the payload's whole process tree; over its limit (with headroom), kill it."""
        assert self.pid is not None
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while True:
            total = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass  # it ended between the listing and the read
            used = total // (1024 * 1024)
            self.peak_memory_mb = max(self.peak_memory_mb, used)
            if self.memory_limit_mb and used > self.memory_limit_mb * self.memory_headroom:
                self.kill(f"out of memory (peak {self.peak_memory_mb} MB, limit "
                          f"{self.memory_limit_mb} MB)")
                return
            await asyncio.sleep(0.2)

    async def _watch_for_stall(self) -> None:
        """Kill the payload when its log has not grown for stall_timeout seconds."""
        assert self.stall_timeout is not None
        last_size, last_change = -1, time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.stall_timeout / 4))
            try:
                size = self.log_path.stat().st_size  # noqa: ASYNC240
            except OSError:
                size = last_size
            now = time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change >= self.stall_timeout:
                self.kill(f"stalled: no output for {self.stall_timeout:g} s")
                return

    def _read_result(self) -> Any:
        try:
            size = self.result_path.stat().st_size
        except FileNotFoundError:
            return None
        if size > MAX_RESULT_BYTES:
            self._note(f"result file is {size} bytes, over the {MAX_RESULT_BYTES} byte limit")
            return None
        try:
            return json.loads(self.result_path.read_bytes() or b"null")
        except ValueError as exc:
            self._note(f"result file is not valid JSON: {exc}")
            return None

    def _note(self, text: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"corral: {text}\n".encode())

    def _read_tail(self, limit: int) -> str | None:
        if limit <= 0:
            return None
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - limit))
                return log.read().decode(errors="replace")
        except OSError:
            return None


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
