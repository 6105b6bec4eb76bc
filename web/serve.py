"""How the monitor is started under gunicorn, for `corral web` and `corral up` alike."""

from __future__ import annotations

import sys

from shared.config import Settings


def gunicorn_argv(settings: Settings, bind: str | None = None, workers: int | None = None,
                  threads: int | None = None) -> list[str]:
    """gunicorn with threaded workers (`gthread`): a page's polls and a slow RPC block one thread."""
    web = settings.web
    return [sys.executable, "-m", "gunicorn", "--bind", bind or web.bind,
            "--workers", str(workers or web.workers), "--threads", str(threads or web.threads),
            "--worker-class", "gthread", "--timeout", "60", "--graceful-timeout", "10",
            "--access-logfile", "-", "web:create_app()"]


def url_of(bind: str) -> str:
    """The address a person types for a gunicorn bind (0.0.0.0 means this machine's any)."""
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/"
