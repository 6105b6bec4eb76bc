"""The chaos suite's payload: runs for a given time and writes what it did to a shared ledger.

Usage: python payload.py LEDGER SECONDS [MODE]. It appends one JSON line when it starts, one every
0.1 s while it lives (so a killed run's last sign of life is known), and one when it completes,
each with the task, the attempt and its pid. Lines are appended with one write each to a file
opened with O_APPEND, so payloads on one host never interleave within a line.

MODE makes it hostile, as renders sometimes are, while it still does its work: `ignore-term`
ignores SIGTERM; `children` leaves 20 sleeping children behind; `daemon` double-forks a daemon
(its own session) that would sleep for a minute; `flood` prints 32 MiB without a newline (a
`\\r` progress bar gone wild). Whatever it leaves behind must be gone when its attempt ends.
"""

import json
import os
import signal
import sys
import time


def note(ledger: int, event: str) -> None:
    line = {"task": int(os.environ["CORRAL_TASK_ID"]), "attempt": int(os.environ["CORRAL_ATTEMPT"]),
            "pid": os.getpid(), "event": event, "t": time.time()}
    os.write(ledger, (json.dumps(line) + "\n").encode())


def misbehave(mode: str) -> None:
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode == "children":
        for _ in range(20):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
    elif mode == "daemon":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        os.wait()
    elif mode == "flood":
        chunk = b"\rrendering... " * 4096
        for _ in range((32 << 20) // len(chunk)):
            os.write(1, chunk)


def main() -> None:
    path, seconds = sys.argv[1], float(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "plain"
    ledger = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    note(ledger, "start")
    misbehave(mode)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        note(ledger, "alive")
    note(ledger, "end")


if __name__ == "__main__":
    main()
