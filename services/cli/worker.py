"""`corral worker`: run a worker here (`run`), or drain, disable, enable or stop workers anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from services.cli.app import (
    ConfigOption,
    JsonOption,
    _fail,
    _print_json,
    _settings,
    app,
    console,
    rpc_client,
)
from shared.errors import CorralError
from shared.worker_control import Control

worker_app = typer.Typer(
    help="Run a worker here, or drain, disable, enable or stop workers (by id, host or pool).",
    no_args_is_help=True)
app.add_typer(worker_app, name="worker")

WorkerIdArgument = typer.Argument(None, help="The worker's id (as `corral workers` lists it).")
ByHostOption = typer.Option(None, "--host", help="Every live worker on this host.")
ByPoolOption = typer.Option(None, "--pool", help="Every live worker of this pool.")


def _control(config: Path | None, control: Control, worker_id: str | None, host: str | None,
             pool: str | None, as_json: bool, now: bool = False) -> None:
    with rpc_client(_settings(config)) as rpc:
        try:
            reply: dict[str, Any] = rpc.registry.set_worker_wanted_state(
                state=control.value, worker_id=worker_id, host=host, pool=pool, now=now)
        except CorralError as exc:
            _fail(exc)
    if as_json:
        _print_json(reply)
        return
    table = Table("worker", "wanted")
    for name, wanted in sorted(reply["workers"].items()):
        table.add_row(name, wanted)
    console.print(table)


@worker_app.command()
def drain(worker_id: str | None = WorkerIdArgument, host: str | None = ByHostOption,
          pool: str | None = ByPoolOption, config: Path | None = ConfigOption,
          as_json: bool = JsonOption) -> None:
    """Let the running task finish and take no more, until `enable` (also after a restart)."""
    _control(config, Control.DRAIN, worker_id, host, pool, as_json)


@worker_app.command()
def disable(worker_id: str | None = WorkerIdArgument, host: str | None = ByHostOption,
            pool: str | None = ByPoolOption, config: Path | None = ConfigOption,
            as_json: bool = JsonOption) -> None:
    """Keep the worker registered but give it nothing, until `enable` (also after a restart)."""
    _control(config, Control.DISABLE, worker_id, host, pool, as_json)


@worker_app.command()
def enable(worker_id: str | None = WorkerIdArgument, host: str | None = ByHostOption,
           pool: str | None = ByPoolOption, config: Path | None = ConfigOption,
           as_json: bool = JsonOption) -> None:
    """Take work again after a drain or disable (or a stop not yet obeyed)."""
    _control(config, Control.ENABLE, worker_id, host, pool, as_json)


@worker_app.command()
def stop(worker_id: str | None = WorkerIdArgument, host: str | None = ByHostOption,
         pool: str | None = ByPoolOption,
         now: bool = typer.Option(False, "--now", help="Hand the running task back (its attempt "
                                                        "is not charged) instead of finishing it."),
         config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Make the worker leave: after its running task, or at once with --now."""
    _control(config, Control.STOP, worker_id, host, pool, as_json, now)
