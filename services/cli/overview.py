"""Farm views: the workers, the hosts' resources, and the farm at a glance."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from services.cli.app import (
    ConfigOption,
    JsonOption,
    _print_json,
    _settings,
    app,
    console,
    err_console,
    rpc_client,
)
from shared.resources import format_size


@app.command()
def workers(config: Path | None = ConfigOption,
            show_all: bool = typer.Option(False, "--all", help="Include lost and departed."),
            as_json: bool = JsonOption) -> None:
    """List the farm's workers."""
    with rpc_client(_settings(config)) as rpc:
        listing = rpc.registry.list_workers(alive=not show_all)
    if as_json:
        _print_json(listing)
        return
    table = Table("worker", "name", "host", "pool", "bands", "state", "wanted", "task",
                  "last seen")
    for item in listing:
        table.add_row(item["worker_id"], item.get("name") or "", item["host"], item["pool"],
                      ",".join(item["bands"]), item["state"], item.get("wanted") or "active",
                      str(item["current_task"] or ""), f"{item['seen_seconds_ago']:.0f}s ago")
    console.print(table)


@app.command()
def hosts(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Each host's totals, what is reserved on it, and what is free (from the negotiator)."""
    with rpc_client(_settings(config)) as rpc:
        listing = rpc.resource_negotiator.list_hosts()
    if as_json:
        _print_json(listing)
        return
    table = Table("host", "cores free/total", "memory free/total", "GPUs free/total",
                  "reservations")
    for host in listing:
        free, totals = host["free"], host["totals"]
        table.add_row(host["host"], f"{free['cores']:g}/{totals['cores']:g}",
                      f"{format_size(free['memory_mb'])}/{format_size(totals['memory_mb'])}",
                      f"{free['gpus']}/{totals['gpus']}", str(len(host["reservations"])))
    console.print(table)



@app.command()
def status(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """The farm at a glance: workers by state, queue depths, services."""
    with rpc_client(_settings(config)) as rpc:
        overview = rpc.registry.farm_overview()
    if as_json:
        _print_json(overview)
        return
    console.print(f"workers: {overview['workers'] or 'none'}")
    table = Table("queue", "messages", "consumers")
    for queue in overview["queues"]:
        table.add_row(queue["queue"], str(queue["messages"]), str(queue["consumers"]))
    console.print(table)
    reports = overview.get("reports") or {}
    if reports.get("dead"):
        err_console.print(f"[red]{reports['dead']} finish reports could not be applied[/red]: "
                          "they are kept in corral.reports.dead (see the scheduler's log)")
    for service in overview["services"]:
        mark = "[green]up[/green]" if service["alive"] else "[red]silent[/red]"
        console.print(f"{service['service']} on {service['host']}: {mark}")
