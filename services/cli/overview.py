"""Farm views: the workers, the hosts' resources, and the farm at a glance."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from services.cli.app import (
    ConfigOption,
    JsonOption,
    _ago,
    _print_json,
    _settings,
    app,
    console,
    err_console,
    rpc_client,
)
from services.cli.health import scheduler_leadership
from shared.errors import ServiceUnavailable
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
        live = Counter(w["host"] for w in rpc.registry.list_workers(alive=True))
    for host in listing:
        host["live_workers"] = live.get(host["host"], 0)
    if as_json:
        _print_json(listing)
        return
    table = Table("host", "workers", "reported", "cores free/total", "memory free/total",
                  "GPUs free/total", "reservations")
    for host in listing:
        free, totals = host["free"], host["totals"]
        present = str(host["live_workers"]) if host["live_workers"] else "[dim]none[/dim]"
        table.add_row(host["host"], present, _ago(host["reported_at"]),
                      f"{free['cores']:g}/{totals['cores']:g}",
                      f"{format_size(free['memory_mb'])}/{format_size(totals['memory_mb'])}",
                      f"{free['gpus']}/{totals['gpus']}", str(len(host["reservations"])))
    console.print(table)



@app.command()
def status(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """The farm at a glance: workers by state, the backlog and queue depth per pool and band,
    services."""
    with rpc_client(_settings(config)) as rpc:
        overview = rpc.registry.farm_overview()
        overview["backlog"], backlog_error = _backlog(rpc)
        leadership = None if as_json else scheduler_leadership(rpc)
    if as_json:
        _print_json(overview)
        return
    console.print(f"workers: {overview['workers'] or 'none'}")
    console.print(_queues_table(overview["queues"], overview["backlog"] or []))
    if backlog_error:
        err_console.print(f"[yellow]{escape(backlog_error)}[/yellow]")
    reports = overview.get("reports") or {}
    if reports.get("dead"):
        err_console.print(f"[red]{reports['dead']} finish reports could not be applied[/red]: "
                          "they are kept in corral.reports.dead (see the scheduler's log)")
    for service in overview["services"]:
        mark = "[green]up[/green]" if service["alive"] else "[red]silent[/red]"
        console.print(f"{service['service']} on {service['host']}: {mark}")
    if leadership:
        console.print(f"scheduler: {escape(leadership)}")


def _backlog(rpc: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The scheduler's count of tasks not started, per pool and band; None and why when the
    scheduler does not answer (the rest of the status is still worth showing)."""
    from nameko.exceptions import RpcTimeout

    try:
        return list(rpc.scheduler.farm_stats(minutes=1, backlog=True)["backlog"]), None
    except (ServiceUnavailable, RpcTimeout, TimeoutError) as exc:
        return None, f"tasks waiting in the database are not shown: {exc or 'no answer'}"


def _queues_table(queues: list[dict[str, Any]], backlog: list[dict[str, Any]]) -> Table:
    """One row per pool and band: what waits in the scheduler's database (on dependencies,
    queued, paused) beside what is in the band's queue and who consumes it."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for queue in queues:
        rows.setdefault((queue["pool"], queue["band"]), {}).update(
            messages=queue["messages"], consumers=queue["consumers"])
    for entry in backlog:
        rows.setdefault((entry["pool"], entry["band"]), {}).update(entry)
    table = Table("pool", "band", "waiting on deps", "queued", "paused", "in queue",
                  "consumers")
    for (pool, band), row in sorted(rows.items()):
        table.add_row(pool, band, *(str(row.get(key, 0)) for key in
                                    ("waiting", "queued", "paused", "messages", "consumers")))
    return table
