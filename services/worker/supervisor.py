"""The per-attempt supervisor: runs one payload and leaves nothing of its process tree behind.

It runs as its own small process (`python -I -S supervisor.py`, standard library only, so it
starts without the worker's imports), is the payload's child subreaper (PR_SET_CHILD_SUBREAPER),
so every descendant that double-forks or calls setsid stays under it, and when the payload
exits, is killed, passes its fencing deadline, or the worker dies (its stdin closes), it kills
every descendant: through the attempt's cgroup v2 (`cgroup.kill`) when it was given one, and by
walking /proc for its descendants until none is left.

A payload that ends on its own has done its work, whatever happens to the worker next: with
`outcome` the supervisor writes its end (the worker's finish report, completed with the exit
code and the end time) to that file before it tells the worker, so that a worker killed or
frozen before it could report does not lose the result: another worker of the host delivers it
(services/worker/outbox.py). A payload killed by the supervisor leaves no outcome: it did not
finish, and its attempt is lost or failed as the worker says.

The payload's output goes to its log. With `log_max` (bytes, 0 for no cap) it goes through a pipe
the supervisor copies into a `CappedLog`: past the cap the middle is cut out, keeping the first
`log_head` bytes, a line saying how much was cut, and the latest output.

Protocol, one JSON object per line. On stdin, from the worker: first the payload
`{"argv", "env", "cwd", "log", "nice", "cgroup", "log_max", "log_head", "outcome"}` (`outcome`:
`{"path", "report"}` or null), then any of
`{"deadline": T}` (kill at time.monotonic() T unless moved again) and `{"kill": true}`. On
stdout, to the worker: `{"started": pid}` or `{"error": text}`, then `{"exit": code, "fenced":
bool, "log_error": text or null, "ended_itself": bool}` where a code below zero is the signal
that ended the payload, as in subprocess, and `ended_itself` says that it was not the supervisor
that ended it (an outcome was written).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the lease still fences the task
        pass


def _say(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _strerror(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text[:1].lower() + text[1:]


def descendants(root: int) -> list[tuple[int, bool]]:
    """Every process below `root`, read from /proc, and whether it is a zombie already."""
    children: dict[int, list[tuple[int, bool]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        children.setdefault(int(fields[1]), []).append((int(name), fields[0] == b"Z"))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child[0])
    return found


class CappedLog:
    """A task log kept under its cap: once it passes `limit` and half its tail again, the
    middle is cut out, leaving the first `head` bytes, a line saying how many bytes were cut,
    and the latest output (from a line's start), so the log stays at about `limit` bytes.

    The cut file is written beside the log and renamed over it, so a reader opening the log
    sees either the old file or the new one, never a half-written one.
    """

    def __init__(self, path: str, limit: int, head: int) -> None:
        self.path, self.limit, self.head = path, limit, min(head, limit // 2)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.cut = 0
        self.marker = b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        if os.fstat(self.fd).st_size > self.limit + (self.limit - self.head) // 2:
            self._trim()

    def _marker(self, cut: int) -> bytes:
        return (f"\n[corral: {cut} bytes of output cut here; this log keeps its first "
                f"{self.head} bytes and its last output, {self.limit} bytes in all "
                "(log_max_bytes)]\n").encode()

    def _trim(self) -> None:
        size = os.fstat(self.fd).st_size
        cut = self.cut
        marker = self._marker(cut + size)  # as long as any marker this trim can need
        keep = max(0, self.limit - self.head - len(marker))
        start = max(self.head + len(self.marker), size - keep)
        with open(self.path, "rb") as log:
            log.seek(start)
            newline = log.read(4096).find(b"\n")  # begin the kept part at a line's start
            if 0 <= newline < keep:
                start += newline + 1
            cut += start - self.head - len(self.marker)
            marker = self._marker(cut)
            part = self.path + ".cutting"
            with open(part, "wb") as out:
                log.seek(0)
                out.write(log.read(self.head))
                out.write(marker)
                log.seek(start)
                while chunk := log.read(1 << 20):
                    out.write(chunk)
        os.replace(part, self.path)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.cut, self.marker = cut, marker

    def close(self) -> None:
        os.close(self.fd)


class Payload:
    """The payload process and its whole tree, from start to the last descendant's death."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.cgroup: str | None = spec.get("cgroup")
        self.pid = 0
        self.started_at: float | None = None
        self.status: int | None = None
        self.capped: CappedLog | None = None
        self.output: int | None = None  # the read end of the payload's output pipe, when capped
        self.log_error: str | None = None

    def start(self) -> str | None:
        """Fork and exec the payload; the reason it could not start, or None."""
        try:
            log = os.open(self.spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if self.spec.get("log_max"):
                # Capped: the payload writes into a pipe that `copy_output` empties into the log.
                self.capped = CappedLog(self.spec["log"], int(self.spec["log_max"]),
                                        int(self.spec.get("log_head") or 0))
                os.close(log)
                self.output, log = os.pipe()
                os.set_blocking(self.output, False)
        except OSError as exc:
            return f"could not write the log: {_strerror(exc)}"
        if self.cgroup is not None:
            try:
                os.makedirs(self.cgroup, exist_ok=True)
            except OSError:
                self.cgroup = None  # the tree walk alone then ends the payload's descendants
        failed_read, failed_write = os.pipe()  # close-on-exec: empty at EOF means exec worked
        self.started_at = time.time()
        self.pid = os.fork()
        if self.pid == 0:
            self._exec(log, failed_write)
        os.close(failed_write)
        os.close(log)
        failure = b""
        while chunk := os.read(failed_read, 4096):
            failure += chunk
        os.close(failed_read)
        if failure:
            os.waitpid(self.pid, 0)
            self.status = 127
            return failure.decode(errors="replace")
        return None

    def _exec(self, log: int, failed: int) -> None:
        """In the child: its own session, its cgroup, death with the supervisor, then exec."""
        argv: list[str] = self.spec["argv"]
        try:
            os.setsid()
            if self.cgroup is not None:
                with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as procs:
                    procs.write(str(os.getpid()))
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if self.spec.get("nice"):
                os.nice(int(self.spec["nice"]))
            if self.output is not None:
                os.close(self.output)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            if self.spec.get("cwd"):
                os.chdir(self.spec["cwd"])
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.execvpe(argv[0], argv, self.spec["env"])
        except BaseException as exc:  # noqa: BLE001  (anything at all: say why, never return)
            program = argv[0] if argv else ""
            why = "no such executable" if isinstance(exc, FileNotFoundError) else _strerror(exc)
            try:
                os.write(failed, f"could not start {program!r}: {why}".encode())
            finally:
                os._exit(127)

    def copy_output(self, until_eof: bool = False) -> None:
        """Move what the payload wrote into the capped log: what is in the pipe now, or with
        `until_eof` everything until the last writer has gone (only once none is left)."""
        if self.output is None or self.capped is None:
            return
        give_up = time.monotonic() + 5  # a writer stuck in the kernel cannot hold us
        while True:
            try:
                chunk = os.read(self.output, 1 << 16)
            except BlockingIOError:
                if not until_eof or time.monotonic() > give_up:
                    return
                time.sleep(0.001)
                continue
            if not chunk:
                os.close(self.output)
                self.output = None
                self.capped.close()
                return
            try:
                self.capped.write(chunk)
            except OSError as exc:  # a full disk: the payload is stopped, the attempt fails
                self.log_error = f"could not write the log: {_strerror(exc)}"
                os.close(self.output)
                self.output = None
                return

    def reap(self) -> None:
        """Collect every ended child; the payload's own status is kept."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                               else os.WEXITSTATUS(status))

    def kill_tree(self) -> None:
        """Kill every descendant, until none is left (a dying parent's children come to us)."""
        if self.cgroup is not None:
            try:
                with open(os.path.join(self.cgroup, "cgroup.kill"), "w") as kill:
                    kill.write("1")
            except OSError:
                pass  # an older kernel without cgroup.kill: the walk below does it
        # Until every one is reaped: a zombie's parent dies too, and it comes to us to reap.
        give_up = time.monotonic() + 10  # a process stuck in the kernel (D state) cannot hold us
        while time.monotonic() < give_up:
            self.reap()
            found = descendants(os.getpid())
            if not found:
                break
            for pid, zombie in found:
                if not zombie:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.002)
        if self.cgroup is not None:
            for _ in range(200):
                try:
                    os.rmdir(self.cgroup)
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.005)  # the kernel is still taking the last process out


def main() -> int:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stop = [False]

    def on_term(*_: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    commands = os.fdopen(0, "rb", buffering=0)
    line = commands.readline()
    if not line:
        return 0  # the worker went away before it had work for us
    payload = Payload(json.loads(line))
    failure = payload.start()
    if failure is not None:
        _say({"error": failure})
        return 0
    _say({"started": payload.pid})
    deadline: float | None = None
    fenced = False
    pending = b""
    while not stop[0]:
        payload.reap()
        if payload.status is not None:
            break
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        watched = [0, wake_read] + ([payload.output] if payload.output is not None else [])
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            continue
        if wake_read in ready:
            os.read(wake_read, 4096)
        if payload.output is not None and payload.output in ready:
            payload.copy_output()
            if payload.log_error:
                break  # its output cannot be kept: the attempt fails now, saying why
        if deadline is not None and time.monotonic() >= deadline:
            fenced = True
            break
        if 0 in ready:
            chunk = os.read(0, 65536)
            if not chunk:
                break  # the worker died: nothing of this attempt may outlive it
            pending += chunk
            *lines, pending = pending.split(b"\n")
            message: dict[str, Any] = {}
            for raw in lines:
                if raw.strip():
                    message.update(json.loads(raw))
            if message.get("kill"):
                break
            if "deadline" in message:
                deadline = float(message["deadline"])
    payload.copy_output()  # what the payload wrote before it ended
    payload.reap()
    ended_before_kill = payload.status is not None
    payload.kill_tree()
    payload.copy_output(until_eof=True)  # and what its descendants wrote before they died
    status = payload.status if payload.status is not None else -signal.SIGKILL
    # A SIGKILL cannot be caught: a payload that exited with a code did so before our kill.
    ended_itself = ended_before_kill or status >= 0
    if ended_itself and payload.spec.get("outcome"):
        write_outcome(payload.spec["outcome"], status, payload.started_at, payload.log_error)
    try:
        _say({"exit": status, "fenced": fenced, "log_error": payload.log_error,
              "ended_itself": ended_itself})
    except OSError:
        pass  # the worker is gone; there is nobody to tell
    return 0


def write_outcome(outcome: dict[str, Any], status: int, started_at: float | None,
                  log_error: str | None) -> None:
    """The payload's end, written whole (a temporary file renamed) and readable by us alone:
    it holds the attempt's lease token. Not synced to disk: it is there for a worker that
    dies, not for a machine that does (that takes the payload's work with it)."""
    body = {**outcome["report"], "exit_code": status, "process_started_at": started_at,
            "process_ended_at": time.time(), "log_error": log_error}
    path = str(outcome["path"])
    temporary = path + ".tmp"
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(handle, json.dumps(body).encode())
        finally:
            os.close(handle)
        os.replace(temporary, path)
    except OSError:
        pass  # a full disk: the worker still hears of the end, only a later one cannot


if __name__ == "__main__":
    sys.exit(main())
