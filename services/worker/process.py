"""Runs one task payload under its supervisor: output to a log file, progress, memory, result."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from services.worker import leftovers
from services.worker.leftovers import MARKER_VARIABLE

log = logging.getLogger(__name__)

FENCED = "lease lost: not renewed within the lease"

PROGRESS_LINE = re.compile(rb"CORRAL_PROGRESS\s+(\d{1,3}(?:\.\d+)?)\s*")
LINE_END = re.compile(rb"[\r\n]")
MAX_RESULT_BYTES = 1 << 20
SCAN_CHUNK = 1 << 16
"""Progress is read this much at a time: a line longer than this is no progress line."""
SCAN_BUDGET = 1 << 22
"""At most this much new output is scanned per heartbeat; before it, only the newest counts."""
SUPERVISOR = Path(__file__).with_name("supervisor.py")


class Supervisors:
    """Keeps one attempt supervisor started ahead, so a payload never waits for it to start."""

    def __init__(self) -> None:
        self._spare: asyncio.Task[asyncio.subprocess.Process] | None = None

    @staticmethod
    async def _start() -> asyncio.subprocess.Process:
        # -I -S: the standard library only, none of the worker's imports or environment.
        return await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(SUPERVISOR), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)

    async def take(self) -> asyncio.subprocess.Process:
        """A started, idle supervisor; the next one starts meanwhile."""
        spare, self._spare = self._spare, None
        supervisor = await spare if spare is not None else None
        if supervisor is None or supervisor.returncode is not None:
            supervisor = await self._start()
        self._spare = asyncio.create_task(self._start())
        return supervisor

    async def close(self) -> None:
        if self._spare is not None:
            spare = await self._spare
            if spare.stdin is not None:
                spare.stdin.close()  # an idle supervisor leaves when its stdin closes
            await spare.wait()


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
    log_max_bytes: int = 0
    """The log's cap (0: none): past it the supervisor cuts its middle out (see CappedLog)."""
    log_head_bytes: int = 0
    marker: str = ""
    """Carried by every process of the attempt (CORRAL_RUN), to find what a lost one left."""
    attempts_dir: Path | None = None
    cgroup_base: Path | None = None
    lease_token: str = ""
    """With `attempts_dir`, the supervisor writes the payload's own end there with this token,
    for another worker of the host to report if this one cannot (services/worker/outbox.py)."""
    ended_itself: bool = False
    """The payload ended on its own (not killed by us): it did its work and is always reported."""
    _scanned: int = field(default=0, repr=False)
    _supervisor: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _deadline: float | None = field(default=None, repr=False)
    _kill_reason: str | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.command[0]] if self.shell else list(self.command)

    def scan_progress(self) -> int:
        """Read the output written since the last scan for `CORRAL_PROGRESS n` lines.

        In bounded chunks, with `\\r` ending a line as well as `\\n`: a progress bar printed
        without newlines costs the worker no memory, however much of it there is.
        """
        try:
            with open(self.log_path, "rb") as log:
                size = os.fstat(log.fileno()).st_size
                if size < self._scanned:
                    self._scanned = 0  # its middle was cut out (CappedLog): read the new end
                self._scanned = max(self._scanned, size - SCAN_BUDGET)
                log.seek(self._scanned)
                while chunk := log.read(SCAN_CHUNK):
                    ends = [match.end() for match in LINE_END.finditer(chunk)]
                    if ends:
                        cut = ends[-1]
                    elif len(chunk) == SCAN_CHUNK:
                        cut = len(chunk)
                    else:
                        break  # a partial line: read whole next time
                    for line in LINE_END.split(chunk[:cut]):
                        match = PROGRESS_LINE.fullmatch(line)
                        if match:
                            self.progress = max(0, min(100, int(float(match.group(1)))))
                    self._scanned += cut
        except OSError:
            pass
        return self.progress

    def kill(self, reason: str) -> None:
        """Kill the payload's whole tree now; `reason` becomes the attempt's failure reason."""
        self._kill_reason = self._kill_reason or reason
        self._tell({"kill": True})

    def fence_at(self, deadline: float) -> None:
        """Have the supervisor kill the payload at time.monotonic() `deadline` unless moved on.

        The supervisor keeps the deadline itself, so a worker that is stopped or cut off cannot
        let its payload run past its lease.
        """
        self._deadline = deadline
        self._tell({"deadline": deadline})

    def _tell(self, message: dict[str, Any]) -> None:
        supervisor = self._supervisor
        if supervisor is None or supervisor.stdin is None or supervisor.returncode is not None:
            return
        try:
            supervisor.stdin.write(json.dumps(message).encode() + b"\n")
        except (ConnectionError, RuntimeError):
            pass  # it has ended; so has the payload

    def _payload_env(self, base_env: dict[str, str]) -> dict[str, str]:
        env = {**base_env, **self.env, "CORRAL_TASK_ID": str(self.task_id),
               "CORRAL_JOB_ID": str(self.job_id), "CORRAL_ATTEMPT": str(self.attempt),
               "CORRAL_RESULT": str(self.result_path)}
        if self.marker:
            env[MARKER_VARIABLE] = self.marker
        if self.cores:
            env["CORRAL_CORES"] = f"{self.cores:g}"
        if self.memory_limit_mb:
            env["CORRAL_MEMORY_MB"] = str(self.memory_limit_mb)
        if self.gpu_indices is not None:
            # Pinned to the granted GPUs only: a task that was granted none sees none.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in self.gpu_indices)
        return env

    async def run(self, base_env: dict[str, str], log_tail_bytes: int,
                  supervisors: Supervisors | None = None) -> None:
        """Start the payload under its supervisor, wait for it (or its time limit), then collect
        result and log tail. Whatever goes wrong on the way becomes the attempt's reason."""
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.result_path.parent.mkdir(parents=True, exist_ok=True)
            self.result_path.unlink(missing_ok=True)
        except OSError as exc:
            self.reason = f"could not write the log: {_strerror(exc)}"
            return
        env = self._payload_env(base_env)
        # Local stat and open calls take microseconds: not worth a thread hop on the hot path.
        if self.cwd is not None and not os.path.isdir(self.cwd):  # noqa: ASYNC240
            self.reason = f"working directory {self.cwd} does not exist"
            return
        supervisor = await (supervisors or Supervisors()).take()
        assert supervisor.stdin is not None and supervisor.stdout is not None
        self._supervisor = supervisor
        cgroup = (str(self.cgroup_base / self.marker)
                  if self.cgroup_base is not None and self.marker else None)
        self._tell({"argv": self.argv(), "env": env, "cwd": self.cwd, "log": str(self.log_path),
                    "nice": self.nice, "cgroup": cgroup, "log_max": self.log_max_bytes,
                    "log_head": self.log_head_bytes, "outcome": self._outcome_spec(log_tail_bytes)})
        if self._deadline is not None:
            self._tell({"deadline": self._deadline})
        if self._kill_reason is not None:
            self._tell({"kill": True})
        started = await _read_message(supervisor)
        if "started" not in started:
            self.reason = str(started.get("error") or "the attempt's supervisor died")
            self._note(self.reason)
            await _close(supervisor)
            return
        self.started_at = time.time()
        self.pid = int(started["started"])
        record_path = None
        if self.attempts_dir is not None and self.marker:
            try:
                record_path = leftovers.record(self.attempts_dir, self.marker, supervisor.pid,
                                               cgroup)
            except OSError as exc:
                log.warning("could not record attempt %s: %s", self.marker, exc)
        watch = asyncio.create_task(self._watch_for_stall()) if self.stall_timeout else None
        memory = asyncio.create_task(self._watch_memory(supervisor.pid))
        try:
            ended = await asyncio.wait_for(_read_message(supervisor), self.timeout)
        except TimeoutError:
            self.kill(f"timed out after {self.timeout:g} s")
            ended = await _read_message(supervisor)
        finally:
            if watch is not None:
                watch.cancel()
            memory.cancel()
            await _close(supervisor)
        if "exit" not in ended and record_path is not None:
            # The supervisor itself was killed: end what it left before anything else runs here.
            leftovers.end_attempt(json.loads(record_path.read_text()))
        if record_path is not None:
            record_path.unlink(missing_ok=True)
        self.ended_at = time.time()
        self.exit_code = ended.get("exit")
        self.ended_itself = bool(ended.get("ended_itself"))
        if self.ended_itself:
            # It finished before any kill of ours took effect: its own end is what happened.
            self._kill_reason = None
            self.reason = end_reason(self.exit_code, ended.get("log_error"))
        elif ended.get("fenced"):
            self._kill_reason = self._kill_reason or FENCED
        if self._kill_reason:
            self.reason = self._kill_reason
        elif self.exit_code is None:
            self.reason = "the attempt's supervisor died"
        else:
            self.reason = end_reason(self.exit_code, ended.get("log_error"))
        self.scan_progress()
        self.result, note = read_result(self.result_path)
        if note:
            self._note(note)
        self.log_tail = read_tail(self.log_path, log_tail_bytes)

    @property
    def outcome_path(self) -> Path | None:
        """Where the supervisor writes the payload's own end (see services/worker/outbox.py)."""
        if self.attempts_dir is None or not self.marker or not self.lease_token:
            return None
        return self.attempts_dir / f"{self.marker}{OUTCOME_SUFFIX}"

    def _outcome_spec(self, log_tail_bytes: int) -> dict[str, Any] | None:
        path = self.outcome_path
        if path is None:
            return None
        return {"path": str(path), "report": {
            "task_id": self.task_id, "lease_token": self.lease_token,
            "log_path": str(self.log_path), "result_path": str(self.result_path),
            "log_tail_bytes": log_tail_bytes, "worker_pid": os.getpid(),
            "worker_started": leftovers.started(os.getpid())}}

    def finish_report(self) -> dict[str, Any]:
        """The finish report of this attempt, as the scheduler's `corral.reports` queue takes it."""
        return finish_report(self.task_id, self.lease_token, self.exit_code, self.reason,
                             self.result, self.log_tail, self.log_path, self.started_at,
                             self.ended_at, self.peak_memory_mb or None)

    async def _watch_memory(self, supervisor_pid: int) -> None:
        """Sample the payload's whole process tree; over its limit (with headroom), kill it."""
        try:
            root = psutil.Process(supervisor_pid)
        except psutil.Error:
            return
        while True:
            total = 0
            try:
                # Below the supervisor: the payload and every descendant, even orphaned ones.
                tree = root.children(recursive=True)
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

    def _note(self, text: str) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log_file:
                log_file.write(f"corral: {text}\n".encode())
        except OSError:
            pass  # the reason travels in the finish report all the same

OUTCOME_SUFFIX = ".outcome"


def end_reason(exit_code: int | None, log_error: str | None) -> str | None:
    """Why an attempt that ended with `exit_code` failed, when it is not in the code alone."""
    if log_error:
        return str(log_error)  # stopped: its output could not be kept
    if exit_code is not None and exit_code < 0:
        return f"killed by signal {signal.Signals(-exit_code).name}"
    return None


def finish_report(task_id: int, lease_token: str, exit_code: int | None, reason: str | None,
                  result: Any, log_tail: str | None, log_path: Path | str,
                  started_at: float | None, ended_at: float | None,
                  peak_memory_mb: int | None) -> dict[str, Any]:
    """The one form of a finish report; a clean success carries no log tail."""
    return {"task_id": task_id, "lease_token": lease_token, "exit_code": exit_code,
            "result": result, "reason": reason,
            "log_tail": None if exit_code == 0 and not reason else log_tail,
            "log_path": str(log_path), "process_started_at": started_at,
            "process_ended_at": ended_at, "peak_memory_mb": peak_memory_mb}


def read_result(path: Path) -> tuple[Any, str | None]:
    """The payload's result file as JSON, or None and what was wrong with it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"result file cannot be read: {_strerror(exc)}"
    if size > MAX_RESULT_BYTES:
        return None, f"result file is {size} bytes, over the {MAX_RESULT_BYTES} byte limit"
    try:
        return json.loads(path.read_bytes() or b"null"), None
    except ValueError as exc:
        return None, f"result file is not valid JSON: {exc}"
    except OSError as exc:
        return None, f"result file cannot be read: {_strerror(exc)}"


def read_tail(path: Path, limit: int) -> str | None:
    """The last `limit` bytes of a log, or None."""
    if limit <= 0:
        return None
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - limit))
            return log.read().decode(errors="replace")
    except OSError:
        return None


def _strerror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


async def _read_message(supervisor: asyncio.subprocess.Process) -> dict[str, Any]:
    """The supervisor's next line, or {} when it has gone."""
    assert supervisor.stdout is not None
    line = await supervisor.stdout.readline()
    try:
        message = json.loads(line) if line else {}
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


async def _close(supervisor: asyncio.subprocess.Process) -> None:
    if supervisor.stdin is not None:
        supervisor.stdin.close()
    await supervisor.wait()
