"""Admin commands: licence pools, and the services' database schemas."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from services.cli.app import (
    ConfigOption,
    JsonOption,
    _ago,
    _fail,
    _print_json,
    _settings,
    app,
    console,
    err_console,
    rpc_client,
)
from shared.config import Settings
from shared.errors import CorralError

licences_app = typer.Typer(help="Licence pools: list them, set a pool's count, remove one.")
app.add_typer(licences_app, name="licences")


@licences_app.callback(invoke_without_command=True)
def licences(ctx: typer.Context, config: Path | None = ConfigOption,
             as_json: bool = JsonOption) -> None:
    """Each licence pool: its total, what Corral's tasks hold, what is used outside Corral, and free."""
    if ctx.invoked_subcommand is not None:
        return
    with rpc_client(_settings(config)) as rpc:
        listing = rpc.license.list_pools()
    if as_json:
        _print_json(listing)
        return
    table = Table("licence", "total", "in use", "external", "free", "source", "synced", "per")
    notes = []
    for pool in listing:
        table.add_row(pool["name"], str(pool["total"]), str(pool["in_use"]),
                      str(pool["external_in_use"]), str(pool["free"]), pool["source"],
                      _ago(pool["synced_at"]), "host" if pool.get("per_host") else "task")
        if pool.get("hosts"):
            notes.append(f"{pool['name']}: seats held on {', '.join(pool['hosts'])}")
        lifetime = [holder["worker_id"] for holder in pool["holders"] if holder.get("lifetime")]
        if lifetime:
            notes.append(f"{pool['name']}: held for life by {', '.join(lifetime)}")
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)


@licences_app.command("set")
def licences_set(name: str = typer.Argument(..., metavar="NAME"),
                 count: int = typer.Argument(..., metavar="COUNT"),
                 per_host: bool | None = typer.Option(
                     None, "--per-host/--per-task",
                     help="Count one seat per host (a node-locked licence covers every task on "
                          "it), or one per task (the default for a new pool; unchanged if not "
                          "given)."),
                 config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Create a licence pool of COUNT tokens, or change its count (running leases are kept)."""
    with rpc_client(_settings(config)) as rpc:
        try:
            pool = rpc.license.set_pool(name, count, per_host)
        except CorralError as exc:
            _fail(exc)
    if as_json:
        _print_json(pool)
    else:
        console.print(f"{pool['name']}: {pool['total']} ({pool['free']} free)")


@licences_app.command("remove")
def licences_remove(name: str = typer.Argument(..., metavar="NAME"),
                    config: Path | None = ConfigOption) -> None:
    """Remove a licence pool nobody holds (one declared in the config comes back at restart)."""
    with rpc_client(_settings(config)) as rpc:
        try:
            removed = rpc.license.remove_pool(name)
        except CorralError as exc:
            _fail(exc)
    if removed is None:
        _fail(ValueError(f"there is no licence pool named {name!r}"))
    console.print(f"{name}: removed")


db_app = typer.Typer(help="The services' databases: bring them to the newest schema, show their revisions.",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")
ServiceOption = typer.Option(None, "--service", "-s", help="Only this service's database: scheduler, "
                             "registry, negotiator or licence (default: all four).")


def _databases(settings: Settings, service: str | None) -> list[tuple[str, str]]:
    """(service, database URL) for `service`, or for every service database."""
    from shared.migrations import TREES, database_url

    if service is not None and service not in TREES:
        err_console.print(f"[red]error:[/red] no service database named {service!r} "
                          f"(expected one of {', '.join(TREES)})")
        raise typer.Exit(2)
    return [(tree, database_url(settings, tree)) for tree in TREES if service in (None, tree)]


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _sqlite_file_missing(url: str) -> bool:
    path = url.split("///", 1)[-1] if url.startswith("sqlite") else ""
    return bool(path) and path != ":memory:" and not Path(path).exists()


@db_app.command("upgrade")
def db_upgrade(config: Path | None = ConfigOption, service: str | None = ServiceOption) -> None:
    """Bring each service's database to the newest schema, as the services do when they start.

    Useful to migrate before rolling out new services; running it again changes nothing.
    """
    from shared.db import create_db_engine
    from shared.migrations import upgrade

    failed = False
    for tree, url in _databases(_settings(config), service):
        engine = create_db_engine(url)
        try:
            done = upgrade(engine, tree)
        except Exception as exc:  # SchemaError, or the database cannot be reached
            err_console.print(f"[red]{tree}[/red] ({_safe_url(url)}): {exc}")
            failed = True
            continue
        finally:
            engine.dispose()
        if done.recognised is not None:
            what = f"made before migrations, recognised as {done.recognised}, now {done.after}"
        elif done.before == done.after:
            what = f"{done.after}, the newest already"
        else:
            what = f"{done.before or 'empty'} -> {done.after}"
        console.print(f"{tree} ({_safe_url(url)}): {what}")
    if failed:
        raise typer.Exit(1)


@db_app.command("current")
def db_current(config: Path | None = ConfigOption, service: str | None = ServiceOption,
               as_json: bool = JsonOption) -> None:
    """The revision each service's database is at, and the newest this Corral has."""
    from shared.db import create_db_engine
    from shared.migrations import current_revision, head_revision

    rows = []
    failed = False
    for tree, url in _databases(_settings(config), service):
        revision = None
        if not _sqlite_file_missing(url):  # looking must not create an empty database file
            engine = create_db_engine(url)
            try:
                with engine.connect() as connection:
                    revision = current_revision(connection, tree)
            except Exception as exc:  # the database cannot be reached
                err_console.print(f"[red]{tree}[/red] ({_safe_url(url)}): {exc}")
                failed = True
                continue
            finally:
                engine.dispose()
        if _sqlite_file_missing(url):
            err_console.print(
                f"{tree}: no database file at {url.split('///', 1)[-1]}. A relative data_dir is "
                "taken from the current directory: run this where the farm runs, or set "
                "CORRAL_DATA_DIR (or the database URL) as the farm has it.",
                markup=False, highlight=False)
        rows.append({"service": tree, "database": _safe_url(url), "revision": revision,
                     "head": head_revision(tree)})
    if as_json:
        _print_json(rows)
    else:
        table = Table("service", "database", "revision", "newest")
        for row in rows:
            table.add_row(row["service"], row["database"], row["revision"] or "none", row["head"])
        console.print(table)
    if failed:
        raise typer.Exit(1)
