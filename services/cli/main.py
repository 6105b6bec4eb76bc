"""The `corral` command: start the farm, run a worker or a pool, submit and watch jobs, list workers."""

from __future__ import annotations

import os

# Each module registers its commands on the shared app when imported; the order is the help's.
from services.cli import (  # noqa: F401
    accounts,
    admin,
    cleanup,  # (cleanup, usage, log, result)
    health,
    jobs,
    overview,
    run,
    submit,
    worker,
)
from services.cli.app import app


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
