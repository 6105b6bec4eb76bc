"""`corral up`, `corral worker run` and `corral pool`: the commands that run parts of the farm here."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import typer
from rich.markup import escape

from services.cli.app import (
    ConfigOption,
    HostOption,
    MaxTasksOption,
    _fail,
    _settings,
    app,
    console,
    err_console,
)
from services.cli.worker import worker_app
from shared.errors import BrokerUnreachable, ConfigError, CorralError
from shared.rpc import check_broker

# --- running the farm ---------------------------------------------------------------------------

@app.command()
def up(config: Path | None = ConfigOption,
       workers: int = typer.Option(2, "--workers", "-w", min=0,
                                   help="Most workers the pool runs at once (0: none)."),
       min_idle: int = typer.Option(1, "--min-idle", min=1,
                                    help="Workers the pool keeps waiting for work."),
       pool: str = typer.Option("cpu", help="Pool of the started workers."),
       bands: str = typer.Option("", help="Bands the workers serve (default: all)."),
       ) -> None:
    """Run every Corral service and a worker pool of up to N workers on this machine until Ctrl-C."""
    from services.cli.farm import run_farm

    settings = _settings(config)
    try:
        check_broker(settings.amqp_uri)
    except BrokerUnreachable as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(3) from None
    band_list = [b for b in bands.split(",") if b] or [b.name for b in settings.bands]
    raise typer.Exit(run_farm(settings, config, workers, pool, band_list, console, min_idle))


@app.command()
def web(config: Path | None = ConfigOption,
        bind: str | None = typer.Option(None, help="Address to listen on (default: CORRAL.web.bind)."),
        workers: int | None = typer.Option(None, min=1, help="gunicorn worker processes."),
        threads: int | None = typer.Option(None, min=1, help="Threads in each worker."),
        dev: bool = typer.Option(False, "--dev", help="Start even without a farm secret (nobody "
                                                      "can log in then): for working on pages."),
        ) -> None:
    """Run the monitor alone (web pages, REST API, /metrics) under gunicorn until Ctrl-C."""
    from web.app import DEV_ENV_VAR, create_app
    from web.serve import gunicorn_argv, url_of

    settings = _settings(config)
    try:
        create_app(settings, dev=dev)  # refuse here, with the reason, rather than in gunicorn
    except ConfigError as exc:
        err_console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None
    env = dict(os.environ)
    if config is not None:
        env["CORRAL_CONFIG"] = str(config.resolve())
    if dev:
        env[DEV_ENV_VAR] = "1"
    argv = gunicorn_argv(settings, bind, workers, threads)
    console.print(f"Watch the farm at {url_of(bind or settings.web.bind)}")
    os.execve(argv[0], argv, env)


@worker_app.command("run")
def worker(config: Path | None = ConfigOption,
           pool: str = typer.Option("cpu", help="Pool whose queues this worker consumes."),
           bands: str = typer.Option("", help="Comma-separated bands to serve (default: all)."),
           on_stop: str = typer.Option("finish", help="On SIGTERM: 'finish' the running task, "
                                                       "or 'hand-back' to kill and requeue it."),
           nice: str | None = typer.Option(
               None, help="Nice level of payloads: one number, or per band as low=10,normal=5."),
           memory_headroom: float = typer.Option(
               1.0, min=1.0, help="Kill a payload above its memory request times this."),
           cores: float | None = typer.Option(None, help="This host's cores (default: detected)."),
           memory: str | None = typer.Option(None, help="This host's memory, e.g. 64G."),
           gpus: int | None = typer.Option(None, help="This host's GPUs (default: NVML)."),
           host: str | None = HostOption,
           max_tasks: int = MaxTasksOption,
           name: str | None = typer.Option(
               None, "--name", help="Its name on this host, kept across restarts: a drain or "
                                    "disable holds for the next worker of this name and host "
                                    "(default: <pool>-<n>, the lowest n free on this host)."),
           hold_licence: list[str] = typer.Option(
               [], "--hold-licence",
               help="Hold this licence (NAME or NAME=COUNT) from start to exit; take work only "
                    "while holding it. Repeatable."),
           ) -> None:
    """Run one worker here: one payload at a time from the pool's band queues."""
    from services.worker.held_licence import parse_hold_option
    from services.worker.main import DrainMode, run_worker
    from shared.resources import detect_host_totals

    settings = _settings(config)
    band_list = [b for b in bands.split(",") if b] or [b.name for b in settings.bands]
    try:
        mode = DrainMode(on_stop)
    except ValueError:
        _fail(ValueError(f"--on-stop must be 'finish' or 'hand-back', not {on_stop!r}"))
    try:
        niceness = _parse_nice(nice, band_list)
        host_name = host or socket.gethostname()
        totals = detect_host_totals(host_name, cores, memory, gpus)
        run_worker(settings, pool, band_list, mode, niceness, memory_headroom, totals, host_name,
                   max_tasks, name, parse_hold_option(hold_licence))
    except (ValueError, CorralError) as exc:
        _fail(exc)


def _parse_nice(text: str | None, bands: list[str]) -> int | dict[str, int] | None:
    """`10` for every band, or `low=10,normal=5` per band; anything else is an error naming it."""
    if text is None:
        return None
    if "=" not in text:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--nice: {text!r} is not a number or band=number list") from None
    levels = {}
    for item in text.split(","):
        band, _, level = item.partition("=")
        if band not in bands:
            raise ValueError(f"--nice: {band!r} is not one of this worker's bands {bands}")
        try:
            levels[band] = int(level)
        except ValueError:
            raise ValueError(f"--nice: {item!r} needs a number after '='") from None
    return levels


@app.command("pool")
def worker_pool(config: Path | None = ConfigOption,
                pool: str = typer.Option("cpu", help="Pool whose queues the workers consume."),
                bands: str = typer.Option("", help="Comma-separated bands to serve (default: all)."),
                max_workers: int = typer.Option(4, min=1, help="Most workers running at once."),
                min_idle: int = typer.Option(1, min=1, help="Workers kept waiting for work."),
                idle_timeout: float = typer.Option(
                    60, min=0, help="Seconds an idle worker beyond --min-idle lives on."),
                stop_grace: float = typer.Option(
                    10, min=0, help="On stop, seconds a busy worker has to finish its task "
                                    "before handing it back."),
                cores: float | None = typer.Option(None, help="This host's cores (default: detected)."),
                memory: str | None = typer.Option(None, help="This host's memory, e.g. 64G."),
                gpus: int | None = typer.Option(None, help="This host's GPUs (default: NVML)."),
                host: str | None = HostOption,
                max_tasks: int = MaxTasksOption,
                hold_licence: list[str] = typer.Option(
                    [], "--hold-licence",
                    help="Each worker holds this licence (NAME or NAME=COUNT) from its start to "
                         "its exit. Repeatable."),
                ) -> None:
    """Run workers on this host as work needs them: one more whenever the last idle one takes a
    task (up to --max-workers, while the host has free cores and memory); idle extras stop."""
    from services.pool.main import PoolLimits, WorkerTemplate, run_pool
    from shared.resources import detect_host_totals

    settings = _settings(config)
    host_name = host or socket.gethostname()
    try:
        limits = PoolLimits(max_workers, min_idle, idle_timeout)
        totals = detect_host_totals(host_name, cores, memory, gpus)
    except (ValueError, CorralError) as exc:
        _fail(exc)
    template = WorkerTemplate(pool=pool, bands=[b for b in bands.split(",") if b], host=host_name,
                              config=config.resolve() if config else None, cores=cores,
                              memory=memory, gpus=gpus, max_tasks=max_tasks,
                              hold_licences=tuple(hold_licence))
    raise typer.Exit(run_pool(settings, limits, template, totals, stop_grace))
