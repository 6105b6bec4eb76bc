"""The per-attempt supervisor: runs one payload and leaves nothing of its process tree behind.

It runs as its own small process (`python -I -S supervisor.py`, standard library only, so it
starts without the worker's imports), is the payload's child subreaper (PR_SET_CHILD_SUBREAPER),
so every descendant that double-forks or calls setsid stays under it, and when the payload
exits, is killed, passes its fencing deadline, or the worker dies (its stdin closes), it kills
every descendant: through the attempt's cgroup v2 (`cgroup.kill`) when it was given one, and by
walking /proc for its descendants until none is left.

Protocol, one JSON object per line. On stdin, from the worker: first the payload
`{"argv", "env", "cwd", "log", "nice", "cgroup"}`, then any of `{"deadline": T}` (kill at
time.monotonic() T unless moved again) and `{"kill": true}`. On stdout, to the worker:
`{"started": pid}` or `{"error": text}`, then `{"exit": code, "fenced": bool}` where a code
below zero is the signal that ended the payload, as in subprocess.
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


class Payload:
    """The payload process and its whole tree, from start to the last descendant's death."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.cgroup: str | None = spec.get("cgroup")
        self.pid = 0
        self.status: int | None = None

    def start(self) -> str | None:
        """Fork and exec the payload; the reason it could not start, or None."""
        try:
            log = os.open(self.spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            return f"could not write the log: {_strerror(exc)}"
        if self.cgroup is not None:
            try:
                os.makedirs(self.cgroup, exist_ok=True)
            except OSError:
                self.cgroup = None  # the tree walk alone then ends the payload's descendants
        failed_read, failed_write = os.pipe()  # close-on-exec: empty at EOF means exec worked
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
        try:
            ready, _, _ = select.select([0, wake_read], [], [], timeout)
        except InterruptedError:
            continue
        if wake_read in ready:
            os.read(wake_read, 4096)
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
    payload.kill_tree()
    try:
        _say({"exit": payload.status if payload.status is not None else -signal.SIGKILL,
              "fenced": fenced})
    except OSError:
        pass  # the worker is gone; there is nobody to tell
    return 0


if __name__ == "__main__":
    sys.exit(main())
