"""A long randomized chaos run: `python -m tests.chaos --soak 30m [--seed N]`.

It starts its own RabbitMQ node and farm, keeps jobs flowing, injects faults drawn at random
(alone and in bursts) until the time is up, then judges the whole ledger. It prints the seed,
every fault, and the totals; it exits 0 only when nothing was lost, duplicated, run
concurrently, unexpected or leaked.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()  # tests.farm's RPC client runs green, as in the suite

import argparse  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.chaos.harness import ChaosRun  # noqa: E402
from tests.chaos.test_chaos import FAULTS  # noqa: E402
from tests.rabbit import RabbitNode  # noqa: E402


def duration(text: str) -> float:
    """'90s', '30m', '2h' or plain seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--soak", type=duration, default=duration("30m"),
                        help="how long to inject faults (90s, 30m, 2h)")
    parser.add_argument("--seed", type=int, default=random.randrange(2**32))
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    print(f"chaos soak: seed={args.seed} for {args.soak:.0f}s", flush=True)
    with tempfile.TemporaryDirectory(prefix="corral-chaos-") as scratch:
        directory = Path(scratch)
        node = RabbitNode(directory / "rabbit").start()
        (directory / "farm").mkdir()
        run = ChaosRun(directory / "farm", node, args.seed, workers=args.workers)
        try:
            run.start()
            deadline = time.monotonic() + args.soak
            while time.monotonic() < deadline:
                run.submit(run.random.randint(10, 60))
                for _ in range(run.random.randint(1, 3)):
                    time.sleep(run.random.uniform(0.5, 5.0))
                    name = run.random.choice(sorted(FAULTS))
                    run.inject(name, lambda name=name: FAULTS[name](run))
            verdict = run.verdict(timeout=600)
        finally:
            run.stop()
            node.stop()
    if not verdict.passed:
        print(verdict.details(), flush=True)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
