"""`corral cleanup`, `corral usage`, `corral log` and `corral result`: the storage root as the
cleanup service keeps it, and what a task left there, read through services (never by opening
files here, so they work from a machine that does not mount the storage)."""

from __future__ import annotations

import time
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
    err_console,
    rpc_client,
)
from shared.errors import CorralError
from shared.retention import human_size

FOLLOW_PAUSE = 0.3
"""Seconds between reads of a running task's log with --follow."""


def _call(method: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return method(*args, **kwargs)
    except CorralError as exc:
        _fail(exc)


@app.command()
def cleanup(config: Path | None = ConfigOption,
            dry_run: bool = typer.Option(False, "--dry-run",
                                         help="Only list what would be removed and the space "
                                              "it frees."),
            as_json: bool = JsonOption) -> None:
    """Remove what is past its retention now (the cleanup service also does every minute)."""
    with rpc_client(_settings(config)) as rpc:
        data = _call(rpc.cleanup.plan) if dry_run else _call(rpc.cleanup.clean)
    if as_json:
        _print_json(data)
        return
    items = data["items"] if dry_run else data["removed"]
    freed = data["bytes"] if dry_run else data["bytes_freed"]
    table = Table("what", "job", "path", "size", "why")
    for item in items:
        table.add_row(item["kind"], str(item["job_id"]), item["path"] or "(record)",
                      human_size(item["bytes"]), item["why"])
    if items:
        console.print(table)
    verb = "would free" if dry_run else "freed"
    console.print(f"{len(items)} to remove; {verb} {human_size(freed)}" if dry_run
                  else f"removed {len(items)}; {verb} {human_size(freed)}")
    for problem in data.get("errors") or ():
        err_console.print(f"[yellow]not removed now (tried again later):[/yellow] {problem}")
    for stray in data.get("left_alone") or ():
        err_console.print(f"left alone (not Corral's): {stray}")


@app.command()
def usage(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Disk use of the storage root per job and per user, and the space left."""
    with rpc_client(_settings(config)) as rpc:
        data = _call(rpc.cleanup.usage)
    if as_json:
        _print_json(data)
        return
    users = Table("user", "size")
    for entry in data["users"]:
        users.add_row(entry["user"], human_size(entry["bytes"]))
    jobs = Table("job", "user", "logs", "results", "scratch", "total")
    for entry in data["jobs"]:
        jobs.add_row(str(entry["job_id"]), entry["user"] or "", human_size(entry["logs"]),
                     human_size(entry["results"]), human_size(entry["scratch"]),
                     human_size(entry["bytes"]))
    console.print(users)
    console.print(jobs)
    console.print(f"{human_size(data['bytes'])} used; {human_size(data['free_bytes'])} free")
    if data.get("reason"):
        err_console.print(f"[red]{data['reason']}[/red]: nothing new starts until there is room")


@app.command()
def log(task_id: int, config: Path | None = ConfigOption,
        follow: bool = typer.Option(False, "--follow", "-f",
                                    help="Keep printing lines as the running task writes them."),
        attempt: int | None = typer.Option(None, "--attempt", "-a", min=1,
                                           help="This attempt's log (default: the latest).")
        ) -> None:
    """A task's log, whole, or followed while it runs."""
    with rpc_client(_settings(config)) as rpc:
        offset = 0
        while True:
            page = _call(rpc.cleanup.read_log, task_id, attempt, offset)
            if page.get("cut"):
                err_console.print("[yellow]corral: the log passed its cap (log_max_bytes) and "
                                  "its middle was cut out; following on from its end[/yellow]")
            if page["data"]:
                typer.echo(page["data"], nl=False)
            offset = page["next_offset"]
            if page["next_offset"] < page["size"]:
                continue  # more already written: read on without waiting
            if not follow or page["finished"]:
                break
            attempt = page["attempt"]  # a follower stays with the attempt it started on
            time.sleep(FOLLOW_PAUSE)


@app.command()
def result(task_id: int, config: Path | None = ConfigOption) -> None:
    """Collect a done task's result (JSON); its files are removed a minute after collection."""
    with rpc_client(_settings(config)) as rpc:
        data = _call(rpc.scheduler.collect_result, task_id)
    _print_json(data["result"])
