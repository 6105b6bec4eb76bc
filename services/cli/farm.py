"""`corral up`: every service and a worker pool as child processes of one supervisor, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from services.pool.main import HAND_BACK_SECONDS, STOP_GRACE_SECONDS
from shared.config import DEFAULT_CONFIG_PATH, Settings
from shared.credentials import ensure_local_credentials

SERVICES = ("services.registry", "services.scheduler", "services.resource_negotiator",
            "services.license", "services.cleanup")
SERVICE_STOP_SECONDS = 15.0
# The pool's own stop (finish, then hand back, then kill) must end before it is killed itself,
# or its workers would outlive it.
POOL_STOP_SECONDS = STOP_GRACE_SECONDS + HAND_BACK_SECONDS + 5.0


@dataclass
class Child:
    """One supervised process and how to start it again."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


def farm_children(settings: Settings, config: Path | None, workers: int, pool: str,
                  bands: list[str], min_idle: int = 1) -> list[Child]:
    """The services, then (unless `workers` is 0) one pool of at most `workers` workers."""
    config_path = str(Path(config or DEFAULT_CONFIG_PATH).resolve())
    children = [Child(module.split(".")[-1],
                      [sys.executable, "-m", "nameko", "run", "--config", config_path, module])
                for module in SERVICES]
    if workers:
        children.append(Child("pool", [
            sys.executable, "-m", "services.cli", "pool", "--config", config_path,
            "--pool", pool, "--bands", ",".join(bands), "--max-workers", str(workers),
            "--min-idle", str(min(min_idle, workers)),
            "--stop-grace", f"{STOP_GRACE_SECONDS:g}"]))
    # The monitor (web pages, REST API, /metrics) stops with the pool, before the services.
    from web.serve import gunicorn_argv

    children.append(Child("monitor", gunicorn_argv(settings)))
    return children


def farm_environment(settings: Settings) -> dict[str, str]:
    """Absolute paths for every child, so all of them agree whatever their working directory."""
    env = dict(os.environ)
    env["CORRAL_DATA_DIR"] = str(settings.data_dir)
    env["CORRAL_STORAGE_ROOT"] = str(settings.storage_root)
    env["PYTHONUNBUFFERED"] = "1"
    # nameko imports eventlet, which warns on every start (from nameko.extensions, and its
    # EventletDeprecationWarning is no DeprecationWarning); the pin is documented instead.
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::Warning:nameko.extensions")
    return env


def run_farm(settings: Settings, config: Path | None, workers: int, pool: str,
             bands: list[str], console: Console, min_idle: int = 1) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # The local farm's own secret and credentials (data/secret, data/credentials/): every
    # service, worker and CLI reading this config finds them, so nothing needs setting up.
    ensure_local_credentials(settings)
    env = farm_environment(settings)
    if config is not None:  # the monitor (gunicorn) finds the config through the environment
        env["CORRAL_CONFIG"] = str(Path(config).resolve())
    children = farm_children(settings, config, workers, pool, bands, min_idle)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def start(child: Child) -> None:
        # Its own process group: Ctrl-C in the terminal reaches only this supervisor, which then
        # stops the pool first (its workers still reach the services to leave) and the services last.
        child.process = subprocess.Popen(child.argv, env=env, process_group=0)
        console.print(f"[green]started[/green] {child.name} (pid {child.process.pid})")

    for child in children:
        start(child)
    from web.serve import url_of

    console.print(f"Corral is up: data in {settings.data_dir}. Ctrl-C stops everything.")
    console.print(f"Watch the farm at {url_of(settings.web.bind)}")
    while not stopping:
        time.sleep(0.5)
        for child in children:
            if child.process is not None and child.process.poll() is not None and not stopping:
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                console.print(f"[yellow]{child.name} exited with {child.process.returncode}; "
                              f"restarting[/yellow]")
                if len(child.restarts) > 5 and child.name == "monitor":
                    # The farm runs without its web pages (a port taken, say): say so, go on.
                    console.print("[red]the monitor keeps dying; the farm goes on without it "
                                  "(see its messages above)[/red]")
                    child.process = None
                    continue
                if len(child.restarts) > 5:
                    console.print(f"[red]{child.name} keeps dying; stopping the farm[/red]")
                    stopping = True
                    break
                start(child)
    console.print("stopping workers, then services...")
    # The pool first, so its workers' last reports reach services that are still up.
    for group, seconds in ((children[len(SERVICES):], POOL_STOP_SECONDS),
                           (children[:len(SERVICES)], SERVICE_STOP_SECONDS)):
        for child in group:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + seconds
        for child in group:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
    console.print("stopped")
    return 0
