"""The chaos suite's payload: runs for a given time and writes what it did to a shared ledger.

Usage: python payload.py LEDGER SECONDS. It appends one JSON line when it starts, one every
0.1 s while it lives (so a killed run's last sign of life is known), and one when it completes,
each with the task, the attempt and its pid. Lines are appended with one write each to a file
opened with O_APPEND, so payloads on one host never interleave within a line.
"""

import json
import os
import sys
import time


def note(ledger: int, event: str) -> None:
    line = {"task": int(os.environ["CORRAL_TASK_ID"]), "attempt": int(os.environ["CORRAL_ATTEMPT"]),
            "pid": os.getpid(), "event": event, "t": time.time()}
    os.write(ledger, (json.dumps(line) + "\n").encode())


def main() -> None:
    path, seconds = sys.argv[1], float(sys.argv[2])
    ledger = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    note(ledger, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        note(ledger, "alive")
    note(ledger, "end")


if __name__ == "__main__":
    main()
