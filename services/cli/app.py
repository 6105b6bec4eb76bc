"""The `corral` command's typer app, the options its commands share, and the RPC client they use."""

from __future__ import annotations

import getpass
import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from shared.config import Settings, load_settings
from shared.credentials import cli_token, presents_local_admin
from shared.errors import BrokerUnreachable, ConfigError, ServiceUnavailable
from shared.identity import CONTEXT_KEY, ORIGIN_KEY
from shared.rpc import farm_rpc

app = typer.Typer(help="Corral: a render and compute farm manager.", no_args_is_help=True,
                  add_completion=False)
console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", envvar="CORRAL_CONFIG",
                            help="Config file (default: deploy/config.yaml).")
JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
HostOption = typer.Option(None, "--host", envvar="CORRAL_HOST",
                          help="This host's name for the farm (default: the machine's hostname).")
MaxTasksOption = typer.Option(0, "--max-tasks", min=0,
                              help="A worker leaves after this many tasks (0: never), so a leak in "
                                   "a payload library cannot grow it for ever.")
FINAL_JOB_STATES = ("done", "failed", "cancelled")


def submitting_user(settings: Settings | None = None) -> str | None:
    """Who a job submitted from here without --user belongs to, whichever way it is submitted:
    your login on a local farm (whose admin credential may submit for anyone), else nobody named,
    so the scheduler takes your token's user."""
    if settings is None or presents_local_admin(settings):
        return getpass.getuser()
    return None


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]config error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@contextmanager
def rpc_client(settings: Settings, timeout: float | None = None) -> Iterator[Any]:
    """The farm's services over RPC; a broker or service that is not there is one clear line."""
    try:
        with farm_rpc(settings.amqp_uri, timeout or settings.rpc_timeout_seconds * 3,
                      context_data=cli_context(settings)) as client:
            yield client
    except BrokerUnreachable as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(3) from None
    except ServiceUnavailable as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(3) from None


def cli_context(settings: Settings) -> dict[str, str]:
    """What every call of this CLI carries: its token (see shared.credentials.cli_token) and,
    for the audit log, who runs it where."""
    context = {ORIGIN_KEY: f"cli {getpass.getuser()}@{socket.gethostname()}"}
    token = cli_token(settings)
    if token is not None:
        context[CONTEXT_KEY] = token
    return context


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]error:[/red] {escape(str(exc))}")
    # A farm that is not there is exit 3, like a broker that is not there; a refusal is 1.
    raise typer.Exit(3 if isinstance(exc, (ServiceUnavailable, BrokerUnreachable)) else 1)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _ago(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
