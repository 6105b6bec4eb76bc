"""The `corral` command: start the farm, run a worker or a pool, submit and watch jobs, list workers."""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.config import Settings, load_settings
from shared.errors import BrokerUnreachable, ConfigError, CorralError
from shared.resources import format_size
from shared.templates import TEMPLATES, template_from_args

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


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None


def check_broker(amqp_uri: str) -> None:
    """Raise BrokerUnreachable with advice when RabbitMQ does not answer."""
    from kombu import Connection

    try:
        with Connection(amqp_uri, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        safe_uri = amqp_uri.split("@")[-1]
        raise BrokerUnreachable(
            f"RabbitMQ is not reachable at {safe_uri} ({exc}).\n"
            "Start it with `rabbitmq-server -detached` (or `sudo systemctl start rabbitmq-server`),"
            " or point CORRAL_AMQP_URI at a running broker.") from None


@contextmanager
def rpc_client(settings: Settings, timeout: float | None = None) -> Iterator[Any]:
    from nameko.standalone.rpc import ClusterRpcProxy

    try:
        check_broker(settings.amqp_uri)
    except BrokerUnreachable as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    with ClusterRpcProxy(uri=settings.amqp_uri,
                         timeout=timeout or settings.rpc_timeout_seconds * 3) as client:
        yield client


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


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
    from services.farm import run_farm

    settings = _settings(config)
    try:
        check_broker(settings.amqp_uri)
    except BrokerUnreachable as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    band_list = [b for b in bands.split(",") if b] or [b.name for b in settings.bands]
    raise typer.Exit(run_farm(settings, config, workers, pool, band_list, console, min_idle))


@app.command()
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
           ) -> None:
    """Run one worker: one payload at a time from the pool's band queues."""
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
                   max_tasks)
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
                ) -> None:
    """Run workers on this host as work needs them: one more whenever the last idle one takes a
    task (up to --max-workers, while the host has free cores and memory); idle extras stop."""
    from services.pool import PoolLimits, WorkerTemplate, run_pool
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
                              memory=memory, gpus=gpus, max_tasks=max_tasks)
    raise typer.Exit(run_pool(settings, limits, template, totals, stop_grace))


# --- jobs ---------------------------------------------------------------------------------------

def _parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(ValueError(f"--env wants KEY=VALUE, got {item!r}"))
        env[key] = value
    return env


def _is_template(args: list[str]) -> bool:
    """`corral submit blender ...` names a template; `corral submit -- blender ...` a command."""
    if not args or args[0] not in TEMPLATES:
        return False
    argv = sys.argv
    dash = argv.index("--") if "--" in argv else len(argv)
    return args[0] in argv[:dash]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(ctx: typer.Context, config: Path | None = ConfigOption,
           name: str = typer.Option("job", help="Job name."),
           user: str = typer.Option(None, help="Owner (default: your login)."),
           pool: str = typer.Option("cpu", help="Pool to run in."),
           priority: int = typer.Option(50, help="Priority; its band decides which workers."),
           env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable."),
           cwd: str | None = typer.Option(None, help="Working directory of the task."),
           max_attempts: int = typer.Option(1, help="Attempts before the task fails."),
           retry_delay: float = typer.Option(0, help="Seconds between attempts."),
           timeout: float | None = typer.Option(None, help="Wall-clock limit in seconds."),
           shell: bool = typer.Option(False, help="Run the command through /bin/sh -c."),
           spec: Path | None = typer.Option(None, help="Submit a JSON job spec file instead."),
           wait: bool = typer.Option(False, help="Wait for the job and show its progress."),
           as_json: bool = JsonOption) -> None:
    """Submit a job: `corral submit OPTIONS -- CMD ARGS...`, `--spec job.json`, or a template:
    `corral submit blender scene.blend --frames 1-240 --chunk 10 [--movie out.mp4]`."""
    settings = _settings(config)
    if spec is None and _is_template(ctx.args):
        try:
            job_spec = template_from_args(ctx.args[0], ctx.args[1:])
        except CorralError as exc:
            _fail(exc)
        job_spec.update({"user": user or getpass.getuser(), "pool": pool, "priority": priority,
                         "retry": {"max_attempts": max_attempts, "delay_seconds": retry_delay}})
        if name != "job":
            job_spec["name"] = name
        if env:
            job_spec["env"] = {**job_spec.get("env", {}), **_parse_env(env)}
        if timeout is not None:
            job_spec["timeout"] = timeout
    elif spec is not None:
        try:
            job_spec = json.loads(spec.read_text())
        except (OSError, ValueError) as exc:
            _fail(ValueError(f"--spec {spec}: {exc}"))
    else:
        command = list(ctx.args)
        if not command:
            _fail(ValueError("no command given: corral submit [options] -- CMD ARGS..."))
        task: dict[str, Any] = {"command": [" ".join(command)] if shell else command,
                                "shell": shell}
        job_spec = {"name": name, "user": user or getpass.getuser(), "pool": pool,
                    "priority": priority, "env": _parse_env(env), "cwd": cwd, "tasks": [task],
                    "retry": {"max_attempts": max_attempts, "delay_seconds": retry_delay}}
        if timeout is not None:
            job_spec["timeout"] = timeout
    with rpc_client(settings) as rpc:
        try:
            job = rpc.scheduler.submit_job(job_spec)
        except CorralError as exc:
            _fail(exc)
        if as_json and not wait:
            _print_json(job)
            return
        if not as_json:
            console.print(f"submitted job [bold]{job['id']}[/bold] ({job['task_count']} tasks, "
                          f"band {job['band']})")
        if wait:
            final = _watch(rpc, job["id"], quiet=as_json)
            if as_json:
                _print_json(final)
            raise typer.Exit(0 if final["state"] == "done" else 1)


@app.command()
def jobs(config: Path | None = ConfigOption,
         state: str | None = typer.Option(None, help="Only jobs in this state."),
         user: str | None = typer.Option(None, help="Only this user's jobs."),
         page: int = typer.Option(1, min=1), page_size: int = typer.Option(50, min=1, max=1000),
         as_json: bool = JsonOption) -> None:
    """List jobs, newest first."""
    with rpc_client(_settings(config)) as rpc:
        listing = rpc.scheduler.list_jobs(state=state, user=user, page=page, page_size=page_size)
    if as_json:
        _print_json(listing)
        return
    table = Table("id", "name", "user", "state", "band", "done/total", "created")
    for job in listing["jobs"]:
        table.add_row(str(job["id"]), job["name"], job["user"], job["state"], job["band"],
                      f"{job['counts'].get('done', 0)}/{job['task_count']}",
                      _ago(job["created_at"]))
    console.print(table)
    console.print(f"page {listing['page']}, {listing['total']} jobs in all")


def _job_table(job: dict[str, Any]) -> Table:
    table = Table("task", "name", "state", "progress", "attempt", "exit", "worker", "reason")
    for task in job["tasks"]:
        table.add_row(str(task["id"]), task["name"], task["state"], f"{task['progress']}%",
                      str(task["attempt"]), "" if task["exit_code"] is None
                      else str(task["exit_code"]), task["worker_id"] or "",
                      (task["reason"] or "")[:60])
    return table


def _eta(job: dict[str, Any]) -> str:
    seconds = job.get("eta_seconds")
    return "" if seconds is None else f"eta {int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _watch(rpc: Any, job_id: int, quiet: bool = False) -> dict[str, Any]:
    job = rpc.scheduler.get_job(job_id, task_limit=0)
    with Progress(TextColumn("job {task.fields[job_id]} {task.fields[state]}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                  console=err_console, disable=quiet) as progress:
        bar = progress.add_task("job", total=job["task_count"], job_id=job_id, state=job["state"],
                                eta=_eta(job))
        while True:
            finished = sum(job["counts"].get(s, 0) for s in ("done", "failed", "cancelled"))
            progress.update(bar, completed=finished, state=job["state"], eta=_eta(job))
            if job["state"] in FINAL_JOB_STATES:
                return rpc.scheduler.get_job(job_id)
            time.sleep(0.5)
            job = rpc.scheduler.get_job(job_id, task_limit=0)


@app.command()
def job(job_id: int, config: Path | None = ConfigOption,
        watch: bool = typer.Option(False, "--watch", help="Follow progress until it ends."),
        as_json: bool = JsonOption) -> None:
    """Show one job and its tasks."""
    with rpc_client(_settings(config)) as rpc:
        try:
            data = _watch(rpc, job_id, quiet=as_json) if watch else rpc.scheduler.get_job(job_id)
        except CorralError as exc:
            _fail(exc)
    if as_json:
        _print_json(data)
        return
    console.print(f"job [bold]{data['id']}[/bold] {data['name']} ({data['user']}): "
                  f"[bold]{data['state']}[/bold]  counts {data['counts']}")
    console.print(_job_table(data))


@app.command()
def task(task_id: int, config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Show one task, every attempt, and the log tail of a failure."""
    with rpc_client(_settings(config)) as rpc:
        try:
            data = rpc.scheduler.get_task(task_id)
        except CorralError as exc:
            _fail(exc)
    if as_json:
        _print_json(data)
        return
    console.print(f"task [bold]{data['id']}[/bold] {data['name']}: [bold]{data['state']}[/bold]"
                  f"  exit {data['exit_code']}  {data['reason'] or ''}")
    console.print(f"command: {data['command']}")
    table = Table("attempt", "worker", "state", "exit", "reason")
    for attempt in data["attempts"]:
        table.add_row(str(attempt["number"]), attempt["worker_id"], attempt["state"],
                      "" if attempt["exit_code"] is None else str(attempt["exit_code"]),
                      attempt["reason"] or "")
    console.print(table)
    if data.get("log_tail"):
        console.print("[bold]log tail:[/bold]")
        console.print(data["log_tail"], markup=False, highlight=False)


UserFilter = typer.Option(None, "--user", help="Bulk: every job of this user.")
StateFilter = typer.Option(None, "--state", help="Bulk: every job in this state.")
NameFilter = typer.Option(None, "--name", help="Bulk: jobs whose name matches a glob (shot010*).")
ObjectId = typer.Argument(None, metavar="[ID]", help="A job id (or a task id with --task).")


def _job_operation(config: Path | None, operation: str, object_id: int | None,
                   user: str | None, state: str | None, name: str | None, as_json: bool,
                   single: Any, **extra: Any) -> None:
    """One job by id, or every job matching --user/--state/--name through scheduler.bulk."""
    if object_id is None and not (user or state or name):
        _fail(ValueError(f"{operation}: give a job ID, or a filter (--user, --state, --name)"))
    with rpc_client(_settings(config)) as rpc:
        try:
            if user or state or name:
                reply = rpc.scheduler.bulk(operation, user=user, state=state, name_pattern=name,
                                           job_ids=[object_id] if object_id else None, **extra)
            else:
                reply = single(rpc, object_id)
        except CorralError as exc:
            _fail(exc)
    if as_json:
        _print_json(reply)
    elif "done" in reply:
        console.print(f"{operation}: {len(reply['done'])} jobs")
        for error in reply["errors"]:
            err_console.print(f"job {error['job_id']}: {error['error']}")
    else:
        console.print(", ".join(f"{key} {value}" for key, value in reply.items()))


@app.command()
def cancel(object_id: int | None = ObjectId, config: Path | None = ConfigOption,
           is_task: bool = typer.Option(False, "--task", help="ID is a task, not a job."),
           user: str | None = UserFilter, state: str | None = StateFilter,
           name: str | None = NameFilter, as_json: bool = JsonOption) -> None:
    """Cancel a job, a task (--task), or jobs by filter; running processes are killed."""
    _job_operation(config, "cancel", object_id, user, state, name, as_json,
                   lambda rpc, i: rpc.scheduler.cancel_task(i) if is_task
                   else rpc.scheduler.cancel_job(i))


@app.command()
def retry(object_id: int | None = ObjectId, config: Path | None = ConfigOption,
          is_task: bool = typer.Option(False, "--task", help="ID is a task, not a job."),
          user: str | None = UserFilter, state: str | None = StateFilter,
          name: str | None = NameFilter, as_json: bool = JsonOption) -> None:
    """Run failed tasks again (a job's, one task's, or by filter); their dependents follow."""
    _job_operation(config, "retry", object_id, user, state, name, as_json,
                   lambda rpc, i: rpc.scheduler.retry_task(i) if is_task
                   else rpc.scheduler.retry_job(i))


@app.command()
def pause(object_id: int | None = ObjectId, config: Path | None = ConfigOption,
          kill: bool = typer.Option(False, "--kill", help="Stop running tasks now (uncharged)."),
          user: str | None = UserFilter, state: str | None = StateFilter,
          name: str | None = NameFilter, as_json: bool = JsonOption) -> None:
    """Pause jobs: running tasks finish (or with --kill stop now), nothing new starts."""
    _job_operation(config, "pause", object_id, user, state, name, as_json,
                   lambda rpc, i: rpc.scheduler.pause_job(i, kill=kill), kill=kill)


@app.command()
def resume(object_id: int | None = ObjectId, config: Path | None = ConfigOption,
           user: str | None = UserFilter, state: str | None = StateFilter,
           name: str | None = NameFilter, as_json: bool = JsonOption) -> None:
    """Resume paused jobs."""
    _job_operation(config, "resume", object_id, user, state, name, as_json,
                   lambda rpc, i: rpc.scheduler.resume_job(i))


@app.command()
def priority(new_priority: int = typer.Argument(..., metavar="PRIORITY"),
             object_id: int | None = ObjectId, config: Path | None = ConfigOption,
             user: str | None = UserFilter, state: str | None = StateFilter,
             name: str | None = NameFilter, as_json: bool = JsonOption) -> None:
    """Change the priority of a job (`corral priority 500 12`) or of jobs by filter."""
    _job_operation(config, "priority", object_id, user, state, name, as_json,
                   lambda rpc, i: rpc.scheduler.set_priority(i, new_priority),
                   priority=new_priority)


@app.command()
def requeue(task_id: int, config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Put a task back at the head of its band (a running one is stopped, uncharged)."""
    with rpc_client(_settings(config)) as rpc:
        try:
            reply = rpc.scheduler.requeue_task(task_id)
        except CorralError as exc:
            _fail(exc)
    if as_json:
        _print_json(reply)
    else:
        console.print(f"task {task_id}: {reply['state']}")


@app.command()
def why(task_id: int, config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Why a task is not running yet (or where it is), in words and as a code."""
    with rpc_client(_settings(config)) as rpc:
        try:
            answer = rpc.scheduler.why_task(task_id)
        except CorralError as exc:
            _fail(exc)
    if as_json:
        _print_json(answer)
    else:
        console.print(f"task {task_id} is {answer['state']} [{answer['code']}]: {answer['reason']}")


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
    table = Table("worker", "host", "pool", "bands", "state", "task", "last seen")
    for item in listing:
        table.add_row(item["worker_id"], item["host"], item["pool"], ",".join(item["bands"]),
                      item["state"], str(item["current_task"] or ""),
                      f"{item['seen_seconds_ago']:.0f}s ago")
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
    table = Table("licence", "total", "in use", "external", "free", "source", "synced")
    for pool in listing:
        table.add_row(pool["name"], str(pool["total"]), str(pool["in_use"]),
                      str(pool["external_in_use"]), str(pool["free"]), pool["source"],
                      _ago(pool["synced_at"]))
    console.print(table)


@licences_app.command("set")
def licences_set(name: str = typer.Argument(..., metavar="NAME"),
                 count: int = typer.Argument(..., metavar="COUNT"),
                 config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Create a licence pool of COUNT tokens, or change its count (running leases are kept)."""
    with rpc_client(_settings(config)) as rpc:
        try:
            pool = rpc.license.set_pool(name, count)
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


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
