"""Job commands: submit, list, show, watch, control (cancel/retry/pause/resume/priority/requeue), why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.app import (
    FINAL_JOB_STATES,
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
from shared.errors import CorralError

# --- jobs ---------------------------------------------------------------------------------------

@app.command()
def jobs(config: Path | None = ConfigOption,
         state: str | None = typer.Option(None, help="Only jobs in this state."),
         user: str | None = typer.Option(None, help="Only this user's jobs."),
         page: int = typer.Option(1, min=1), page_size: int = typer.Option(50, min=1, max=1000),
         as_json: bool = JsonOption) -> None:
    """List jobs, newest first."""
    with rpc_client(_settings(config)) as rpc:
        try:
            listing = rpc.scheduler.list_jobs(state=state, user=user, page=page,
                                              page_size=page_size)
        except CorralError as exc:
            _fail(exc)
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


def _notifications_table(job: dict[str, Any]) -> Table:
    """Each delivery of the job's notifications and how it went."""
    table = Table("notification", "event", "to", "state", "tries", "last answer")
    for delivery in job.get("notifications") or ():
        last = delivery["last_error"] or (str(delivery["last_status"])
                                          if delivery["last_status"] is not None else "")
        table.add_row(str(delivery["id"]), delivery["event"],
                      f"{delivery['kind']} {delivery['target']}", delivery["state"],
                      str(delivery["tries"]), last[:60])
    return table


def _eta(job: dict[str, Any]) -> str:
    seconds = job.get("eta_seconds")
    return "" if seconds is None else f"eta {int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _progress_fields(job: dict[str, Any]) -> dict[str, Any]:
    """The progress bar of a job: done tasks plus the running ones' own progress; failed and
    cancelled tasks are counted beside it, not as progress."""
    counts = job["counts"]
    unsuccessful = ", ".join(f"{counts[state]} {state}" for state in ("failed", "cancelled")
                             if counts.get(state))
    return {"completed": job.get("completed", counts.get("done", 0)), "state": job["state"],
            "eta": _eta(job), "done": counts.get("done", 0),
            "failed": f" ({unsuccessful})" if unsuccessful else ""}


def _watch(rpc: Any, job_id: int, quiet: bool = False) -> dict[str, Any]:
    job = rpc.scheduler.get_job(job_id, task_limit=0)
    with Progress(TextColumn("job {task.fields[job_id]} {task.fields[state]}"), BarColumn(),
                  TextColumn("{task.fields[done]}/{task.total:g} done{task.fields[failed]}"),
                  TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                  console=err_console, disable=quiet) as progress:
        bar = progress.add_task("job", total=job["task_count"], job_id=job_id, state=job["state"],
                                eta=_eta(job), done=0, failed="")
        while True:
            progress.update(bar, **_progress_fields(job))
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
    if data.get("notifications"):
        console.print(_notifications_table(data))


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
JobId = typer.Argument(None, metavar="[ID]", help="A job id.")


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
def pause(object_id: int | None = JobId, config: Path | None = ConfigOption,
          kill: bool = typer.Option(False, "--kill", help="Stop running tasks now (uncharged)."),
          user: str | None = UserFilter, state: str | None = StateFilter,
          name: str | None = NameFilter, as_json: bool = JsonOption) -> None:
    """Pause jobs: running tasks finish (or with --kill stop now), nothing new starts."""
    _job_operation(config, "pause", object_id, user, state, name, as_json,
                   lambda rpc, i: rpc.scheduler.pause_job(i, kill=kill), kill=kill)


@app.command()
def resume(object_id: int | None = JobId, config: Path | None = ConfigOption,
           user: str | None = UserFilter, state: str | None = StateFilter,
           name: str | None = NameFilter, as_json: bool = JsonOption) -> None:
    """Resume paused jobs."""
    _job_operation(config, "resume", object_id, user, state, name, as_json,
                   lambda rpc, i: rpc.scheduler.resume_job(i))


@app.command()
def priority(new_priority: int = typer.Argument(..., metavar="PRIORITY"),
             object_id: int | None = JobId, config: Path | None = ConfigOption,
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
        where = ", first in its band" if reply.get("head") else ""
        console.print(f"task {task_id}: {reply['state']}{where}")


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
        console.print(f"task {task_id} is {answer['state']} [{answer['code']}]: {answer['reason']}",
                      markup=False, highlight=False)
