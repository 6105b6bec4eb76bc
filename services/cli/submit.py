"""`corral submit`: a job from a command, a template or a spec file, with the same options for all."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import typer

from services.cli.app import (
    ConfigOption,
    JsonOption,
    _fail,
    _print_json,
    _settings,
    app,
    console,
    rpc_client,
    submitting_user,
)
from services.cli.jobs import _watch
from shared.config import Settings
from shared.errors import CorralError
from shared.templates import TEMPLATES, template_from_args

TEMPLATE_PANEL = "Templates (blender, blender-movie, python) and frame ranges"
RESOURCE_PANEL = "Resources, licences and dependencies"

# Options only a template takes, as (parameter, flag): passed on to the template's own parser.
TEMPLATE_ONLY = (("movie", "--movie"), ("fps", "--fps"), ("output", "--output"),
                 ("engine", "--engine"), ("samples", "--samples"),
                 ("resolution", "--resolution"), ("file_format", "--format"),
                 ("threads", "--threads"), ("blender", "--blender"), ("python", "--python"))


def _parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _parse_licences(items: list[str]) -> dict[str, int]:
    """`--licence houdini` (one) or `--licence nuke=2`, repeatable."""
    licences: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        try:
            licences[name] = int(count) if sep else 1
        except ValueError:
            raise ValueError(f"--licence wants NAME or NAME=COUNT, got {item!r}") from None
    return licences


def _is_template(args: list[str]) -> bool:
    """`corral submit blender ...` names a template; `corral submit -- blender ...` a command."""
    if not args or args[0] not in TEMPLATES:
        return False
    argv = sys.argv
    dash = argv.index("--") if "--" in argv else len(argv)
    return args[0] in argv[:dash]


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (0 is given; None, an empty list and a False flag are not)."""
    return {key: value for key, value in options.items()
            if value is not None and value is not False and value != []}


def build_spec(args: list[str], template: bool, spec_file: Path | None, options: dict[str, Any],
               submit_dir: str, settings: Settings | None = None) -> dict[str, Any]:
    """The job spec `corral submit` sends, from its arguments and the options given.

    Options given override the spec file's (or the template's) fields; options that mean
    nothing for the kind of submit are refused rather than dropped. Relative paths are the
    submitter's: the working directory defaults to `submit_dir`, and a relative --cwd is taken
    from it.
    """
    given = _given(options)
    cwd = os.path.join(submit_dir, given["cwd"]) if "cwd" in given else None
    template_options = [flag for key, flag in TEMPLATE_ONLY if key in given]
    if spec_file is not None:
        refused = [*template_options, *(flag for key, flag in (
            ("frames", "--frames"), ("chunk", "--chunk"), ("shell", "--shell")) if key in given)]
        if args or refused:
            raise ValueError(f"--spec takes the command from the file: "
                             f"{', '.join(refused) or ' '.join(args)} cannot be added to it")
        try:
            job: dict[str, Any] = json.loads(spec_file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--spec {spec_file}: {exc}") from None
        if not isinstance(job, dict):
            raise ValueError(f"--spec {spec_file}: a job spec is a JSON object")
        if isinstance(job.get("cwd"), str):
            job["cwd"] = os.path.join(submit_dir, job["cwd"])
        job.setdefault("cwd", cwd or submit_dir)
    elif template:
        argv = _template_argv(args, given)
        job = template_from_args(args[0], argv, cwd=cwd or submit_dir)
    else:
        if not args:
            raise ValueError("no command given: corral submit [options] -- CMD ARGS...")
        if template_options:
            raise ValueError(f"{', '.join(template_options)}: only a template takes these "
                             f"(corral submit blender SCENE ...); a command takes --frames and "
                             "--chunk with {start} {end} {step} {frame} {frames} in its arguments")
        command = [" ".join(args)] if given.get("shell") else list(args)
        runnable: dict[str, Any] = {"command": command, "shell": bool(given.get("shell"))}
        if "frames" in given:
            job = {"layers": [{"name": "frames", **runnable, "frames": given["frames"],
                               "chunk": given.get("chunk", 1)}]}
        elif "chunk" in given:
            raise ValueError("--chunk cuts a frame range: give --frames too")
        else:
            job = {"tasks": [runnable]}
        job["cwd"] = cwd or submit_dir
    return _apply_options(job, given, cwd, settings)


def _template_argv(args: list[str], given: dict[str, Any]) -> list[str]:
    """The template's own command line: its positional arguments, then the options given."""
    name, positional = args[0], args[1:]
    flags: list[str] = []
    for key, flag in (("frames", "--frames"), ("chunk", "--chunk"), *TEMPLATE_ONLY):
        if key in given:
            flags += [flag, str(given[key])]
    if name == "python":
        return [*positional[:1], *flags, "--", *positional[1:]]
    return [*positional, *flags]


def _apply_options(job: dict[str, Any], given: dict[str, Any], cwd: str | None,
                   settings: Settings | None = None) -> dict[str, Any]:
    """Options given on the command line, over what the spec (file or template) says."""
    for key in ("name", "pool", "priority", "timeout"):
        if key in given:
            job[key] = given[key]
    user = given.get("user") or job.get("user") or submitting_user(settings)
    if user:
        job["user"] = user
    if cwd is not None:
        job["cwd"] = cwd
    if "env" in given:
        job["env"] = {**job.get("env", {}), **_parse_env(given["env"])}
    retry = dict(job.get("retry") or {})
    if "max_attempts" in given:
        retry["max_attempts"] = given["max_attempts"]
    if "retry_delay" in given:
        retry["delay_seconds"] = given["retry_delay"]
    if retry:
        job["retry"] = retry
    resources = dict(job.get("resources") or {})
    for key in ("cores", "memory", "gpus"):
        if key in given:
            resources[key] = given[key]
    if resources:
        job["resources"] = resources
    if "licence" in given:
        job["licences"] = {**(job.get("licences") or {}), **_parse_licences(given["licence"])}
    if "after" in given:
        job["depends_on"] = [*job.get("depends_on", []),
                             *(j for j in given["after"] if j not in job.get("depends_on", []))]
    job["submission_key"] = given.get("key") or job.get("submission_key") or uuid.uuid4().hex
    return job


@app.command(context_settings={"allow_extra_args": True})
def submit(ctx: typer.Context, config: Path | None = ConfigOption,
           name: str | None = typer.Option(None, help="Job name (default: 'job', or the "
                                                      "template's)."),
           user: str | None = typer.Option(None, help="Owner (default: your login)."),
           pool: str | None = typer.Option(None, help="Pool to run in (default: cpu)."),
           priority: int | None = typer.Option(None, help="Priority (default 50); its band "
                                                          "decides which workers."),
           env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable."),
           cwd: str | None = typer.Option(None, help="Working directory of the tasks (default: "
                                                     "the directory you submit from)."),
           max_attempts: int | None = typer.Option(None, min=1,
                                                   help="Attempts before a task fails (default 1)."),
           retry_delay: float | None = typer.Option(None, min=0, help="Seconds between attempts."),
           timeout: float | None = typer.Option(None, help="Wall-clock limit in seconds."),
           shell: bool = typer.Option(False, help="Run the command through /bin/sh -c."),
           spec: Path | None = typer.Option(None, help="Submit a JSON job spec file; the options "
                                                       "given override its fields."),
           key: str | None = typer.Option(
               None, help="Submission key: submitting again under the same key returns the "
                          "first job instead of making another (default: a new key each time)."),
           frames: str | None = typer.Option(
               None, rich_help_panel=TEMPLATE_PANEL,
               help="Frame range (1-240, 1-240x2, 1,5,10): one task per chunk, on a template or "
                    "a command ({start} {end} {step} {frame} {frames} in its arguments)."),
           chunk: int | None = typer.Option(None, min=1, rich_help_panel=TEMPLATE_PANEL,
                                            help="Frames per task (default 1)."),
           movie: str | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                            help="blender: also encode the frames into this movie."),
           fps: int | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                          help="blender --movie: frames per second (24)."),
           output: str | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                             help="blender: output path (//render/frame_####)."),
           engine: str | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                             help="blender: render engine (CYCLES, ...)."),
           samples: int | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                              help="blender: samples per pixel."),
           resolution: str | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                                 help="blender: WIDTHxHEIGHT."),
           file_format: str | None = typer.Option(None, "--format", rich_help_panel=TEMPLATE_PANEL,
                                                  help="blender: image format (PNG, OPEN_EXR, ...)."),
           threads: int | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                              help="blender: render threads."),
           blender: str | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                              help="blender: the program (default: blender)."),
           python: str | None = typer.Option(None, rich_help_panel=TEMPLATE_PANEL,
                                             help="python: the interpreter (default: python3)."),
           cores: float | None = typer.Option(None, min=0, rich_help_panel=RESOURCE_PANEL,
                                              help="Cores each task needs."),
           memory: str | None = typer.Option(None, rich_help_panel=RESOURCE_PANEL,
                                             help="Memory each task needs, e.g. 8G."),
           gpus: int | None = typer.Option(None, min=0, rich_help_panel=RESOURCE_PANEL,
                                           help="GPUs each task needs."),
           licence: list[str] = typer.Option([], "--licence", rich_help_panel=RESOURCE_PANEL,
                                             help="Licence held while a task runs: NAME or "
                                                  "NAME=COUNT, repeatable."),
           after: list[int] = typer.Option([], "--after", metavar="JOB",
                                           rich_help_panel=RESOURCE_PANEL,
                                           help="Start only once job JOB is done, repeatable."),
           wait: bool = typer.Option(False, help="Wait for the job and show its progress."),
           as_json: bool = JsonOption) -> None:
    """Submit a job: `corral submit OPTIONS -- CMD ARGS...`, `--spec job.json`, or a template:
    `corral submit blender scene.blend --frames 1-240 --chunk 10 [--movie out.mp4]`.

    An option this command does not know is an error (put the command after `--`)."""
    settings = _settings(config)
    options = {"name": name, "user": user, "pool": pool, "priority": priority, "env": env,
               "cwd": cwd, "max_attempts": max_attempts, "retry_delay": retry_delay,
               "timeout": timeout, "shell": shell, "key": key, "frames": frames, "chunk": chunk,
               "movie": movie, "fps": fps, "output": output, "engine": engine,
               "samples": samples, "resolution": resolution, "file_format": file_format,
               "threads": threads, "blender": blender, "python": python, "cores": cores,
               "memory": memory, "gpus": gpus, "licence": licence, "after": after}
    args = list(ctx.args)
    try:
        job_spec = build_spec(args, spec is None and _is_template(args), spec, options,
                              os.getcwd(), settings)
    except (ValueError, CorralError) as exc:
        _fail(exc)
    with rpc_client(settings) as rpc:
        try:
            job = rpc.scheduler.submit_job(job_spec)
        except CorralError as exc:
            _fail(exc)
        if as_json and not wait:
            _print_json(job)
            return
        if not as_json:
            again = " (already submitted under this key)" if job.get("repeated") else ""
            console.print(f"submitted job [bold]{job['id']}[/bold] ({job['task_count']} tasks, "
                          f"band {job['band']}){again}")
        if wait:
            final = _watch(rpc, job["id"], quiet=as_json)
            if as_json:
                _print_json(final)
            raise typer.Exit(0 if final["state"] == "done" else 1)
