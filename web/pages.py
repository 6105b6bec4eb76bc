"""The monitor's HTML pages: each renders once, then its live parts refresh from their fragment URL.

A page is `page.html` around fragments (`_overview.html`, ...); `static/corral.js` fetches the
fragment of every `[data-live]` element every 2 s and swaps it in, so nothing reloads the page
and nothing is rendered twice in two languages. A service that is down makes its part say so.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlparse

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from shared.errors import Unauthenticated
from shared.identity import Role
from web import auth
from web.api import act_on_job, act_on_task, list_jobs, set_worker_state, storage_root, task_log
from web.api_models import JobsQuery, LogQuery
from web.errors import describe
from web.farm import answer_or_error, call, call_or_none, calls_or_none
from web.files import last_frame

pages = Blueprint("pages", __name__)
REFRESH_MS = 2000
GRID_PAGE = 1000
GRID_FIELDS = ("id", "name", "layer", "state", "progress")
"""What the job page's task grid shows of each task: only these cross the wire for it."""


@pages.app_template_filter("ago")
def ago(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(0.0, time.time() - float(timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@pages.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _page(template: str, **context: Any) -> str:
    return render_template(template, refresh_ms=REFRESH_MS, **context)


# --- overview ------------------------------------------------------------------------------------

def overview_context() -> dict[str, Any]:
    (overview, overview_error), (hosts, hosts_error), (pools, pools_error), \
        (stats, stats_error) = calls_or_none(
            ("registry", "farm_overview", {}), ("resource_negotiator", "list_hosts", {}),
            ("license", "list_pools", {}), ("scheduler", "farm_stats", {"minutes": 60}))
    live_hosts = set(overview["hosts"]) if overview else None
    return {"overview": overview, "overview_error": overview_error, "hosts": hosts or [],
            "hosts_error": hosts_error, "live_hosts": live_hosts, "pools": pools or [],
            "pools_error": pools_error, "stats": stats, "stats_error": stats_error}


@pages.get("/")
def overview_page() -> str:
    return _page("overview.html", **overview_context())


@pages.get("/fragments/overview")
def overview_fragment() -> str:
    return render_template("_overview.html", **overview_context())


# --- jobs ----------------------------------------------------------------------------------------

def jobs_context() -> dict[str, Any]:
    args = {key: value for key, value in request.args.items() if value}
    try:
        query = JobsQuery.model_validate(args)
    except Exception as exc:
        return {"jobs": None, "jobs_error": describe(exc)[1]["error"], "query": None,
                "args": args}
    listing, error = answer_or_error(lambda: list_jobs(query))
    return {"jobs": listing, "jobs_error": error, "query": query, "args": args}


@pages.get("/jobs")
def jobs_page() -> str:
    return _page("jobs.html", **jobs_context())


@pages.get("/fragments/jobs")
def jobs_fragment() -> str:
    return render_template("_jobs.html", **jobs_context())


def job_context(job_id: int) -> dict[str, Any]:
    offset = max(0, request.args.get("offset", 0, type=int) or 0)
    job, error = call_or_none("scheduler", "get_job", job_id=job_id, task_limit=GRID_PAGE,
                              task_offset=offset, task_fields=list(GRID_FIELDS))
    layers: dict[str, list[dict[str, Any]]] = {}
    for task in (job or {}).get("tasks", []):
        layers.setdefault(task.get("layer") or "tasks", []).append(task)
    return {"job": job, "job_error": error, "job_id": job_id, "layers": layers,
            "offset": offset, "grid_page": GRID_PAGE,
            "selected": request.args.get("task", type=int)}


@pages.get("/jobs/<int:job_id>")
def job_page(job_id: int) -> str:
    context = job_context(job_id)
    selected = context["selected"]
    if selected is None and context["job"]:
        running = [t for t in context["job"].get("tasks", []) if t["state"] == "running"]
        failed = [t for t in context["job"].get("tasks", []) if t["state"] == "failed"]
        tasks = running or failed or context["job"].get("tasks", [])
        selected = tasks[0]["id"] if tasks else None
    context["selected"] = selected
    if selected is not None:
        context.update(task_context(selected))
    return _page("job.html", **context)


@pages.get("/fragments/jobs/<int:job_id>")
def job_fragment(job_id: int) -> str:
    return render_template("_job.html", **job_context(job_id))


def task_context(task_id: int) -> dict[str, Any]:
    task, error = call_or_none("scheduler", "get_task", task_id=task_id)
    context: dict[str, Any] = {"task": task, "task_error": error, "task_id": task_id,
                               "why": None, "log": None, "thumbnail": False}
    if task is None:
        return context
    if task["state"] not in ("done", "cancelled"):
        context["why"], _ = call_or_none("scheduler", "why_task", task_id=task_id)
    context["log"], context["log_error"] = answer_or_error(
        lambda: task_log(task_id, LogQuery(tail=8192)))
    try:
        context["thumbnail"] = last_frame(storage_root(), task) is not None
    except OSError:
        context["thumbnail"] = False
    return context


@pages.get("/fragments/tasks/<int:task_id>")
def task_fragment(task_id: int) -> str:
    return render_template("_task.html", **task_context(task_id))


# --- workers, hosts, licences, audit -------------------------------------------------------------

def workers_context() -> dict[str, Any]:
    workers, workers_error = call_or_none("registry", "list_workers")
    hosts, hosts_error = call_or_none("resource_negotiator", "list_hosts")
    reservations = {r.get("worker_id"): r for h in hosts or [] for r in h.get("reservations", [])}
    live_hosts = (None if workers is None else
                  {w["host"] for w in workers if w.get("state") not in ("left", "lost")})
    return {"workers": workers or [], "workers_error": workers_error, "hosts": hosts or [],
            "hosts_error": hosts_error, "live_hosts": live_hosts, "reservations": reservations}


@pages.get("/workers")
def workers_page() -> str:
    return _page("workers.html", **workers_context())


@pages.get("/fragments/workers")
def workers_fragment() -> str:
    return render_template("_workers.html", **workers_context())


@pages.get("/licences")
def licences_page() -> str:
    pools, error = call_or_none("license", "list_pools")
    return _page("licences.html", pools=pools or [], pools_error=error)


@pages.get("/fragments/licences")
def licences_fragment() -> str:
    pools, error = call_or_none("license", "list_pools")
    return render_template("_licences.html", pools=pools or [], pools_error=error)


@pages.get("/audit")
@auth.requires(Role.ADMIN)
def audit_page() -> str:
    entries, error = call_or_none("registry", "list_audit", limit=200)
    return _page("audit.html", entries=entries or [], audit_error=error)


# --- actions (POST forms; the gate has already refused anonymous people and viewers) -------------

def _back(default: str) -> BaseResponse:
    return _back_to(request.form.get("next") or default, default)


def _done(action: Any, success: str, default: str) -> BaseResponse:
    """Run a page action and say how it went; a lost login still goes to the login page."""
    try:
        action()
    except Exception as exc:
        status, body = describe(exc)
        if status in (401, 500):
            raise
        flash(str(body["error"]), "error")
    else:
        flash(success, "ok")
    return _back(default)


@pages.post("/jobs/<int:job_id>/action")
@auth.requires(Role.ARTIST)
def job_action(job_id: int) -> BaseResponse:
    operation = request.form.get("op", "")
    methods = {"cancel": ("cancel_job", {}), "pause": ("pause_job", {"kill": False}),
               "pause-kill": ("pause_job", {"kill": True}), "resume": ("resume_job", {}),
               "retry": ("retry_job", {})}
    default = url_for("pages.job_page", job_id=job_id)
    if operation == "priority":
        try:
            priority = int(request.form.get("priority", ""))
        except ValueError:
            flash("priority: give a whole number", "error")
            return _back(default)
        return _done(lambda: act_on_job(job_id, "set_priority", priority=priority),
                     f"job {job_id} moved to priority {priority}", default)
    if operation not in methods:
        flash(f"op: {operation!r} is not a job action", "error")
        return _back(default)
    method, kwargs = methods[operation]
    return _done(lambda: act_on_job(job_id, method, **kwargs), f"job {job_id}: {operation} done",
                 default)


@pages.post("/tasks/<int:task_id>/action")
@auth.requires(Role.ARTIST)
def task_action(task_id: int) -> BaseResponse:
    operation = request.form.get("op", "")
    methods = {"cancel": "cancel_task", "retry": "retry_task", "requeue": "requeue_task"}
    if operation not in methods:
        flash(f"op: {operation!r} is not a task action", "error")
        return _back("/jobs")
    return _done(lambda: act_on_task(task_id, methods[operation]),
                 f"task {task_id}: {operation} done", "/jobs")


@pages.post("/workers/<worker_id>/action")
@auth.requires(Role.WRANGLER)
def worker_action(worker_id: str) -> BaseResponse:
    state = request.form.get("state", "")
    if state not in ("drain", "disable", "enable", "stop"):
        flash(f"state: {state!r} is not drain, disable, enable or stop", "error")
        return _back("/workers")
    now = state == "stop" and request.form.get("now") == "1"
    return _done(lambda: set_worker_state(worker_id, state, now),
                 f"worker {worker_id}: {state}{' now' if now else ''}", "/workers")


# --- login ---------------------------------------------------------------------------------------

@pages.route("/login", methods=["GET", "POST"])
@auth.public
def login() -> Any:
    next_url = request.values.get("next") or "/"
    if request.method == "GET":
        return _page("login.html", next=next_url, error=None)
    username, password = request.form.get("username", ""), request.form.get("password", "")
    try:
        answer = call("registry", "authenticate", username=username, password=password)
        auth.login(answer["token"])
    except Unauthenticated as exc:
        return _page("login.html", next=next_url, error=str(exc) or "wrong user or password"), 401
    except Exception as exc:
        status, body = describe(exc)
        if status == 500:
            raise
        return _page("login.html", next=next_url, error=body["error"]), status
    return _back_to(next_url)


def _back_to(target: str, default: str = "/") -> BaseResponse:
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or not target.startswith("/") or target.startswith("//"):
        target = default  # never redirect off this site
    return redirect(target)


@pages.post("/logout")
@auth.public
def logout() -> BaseResponse:
    auth.logout()
    return redirect("/")


@pages.get("/healthz")
@auth.public
def healthz() -> Response:
    return Response('{"ok": true}', mimetype="application/json")
