"""The REST API under /api/v1: the RPC surface over HTTP, files in and out of the storage root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from shared.config import Settings
from shared.identity import Role
from shared.spec import JobSpec
from shared.storage import UPLOADS, task_log_path
from shared.templates import template_from_args
from web import auth, files
from web.api_models import (
    AuditQuery,
    BulkBody,
    JobQuery,
    JobsQuery,
    LicenceBody,
    LoginBody,
    LogQuery,
    PauseBody,
    PriorityBody,
    TemplateBody,
    UploadQuery,
    WorkerStateBody,
)
from web.errors import HttpError
from web.farm import call
from web.openapi import endpoint

PREFIX = "/api/v1"
api = Blueprint("api", __name__, url_prefix=PREFIX)

OBJECT = {"type": "object"}
LIST = {"type": "array", "items": {"type": "object"}}


def settings() -> Settings:
    found: Settings = current_app.extensions["corral_settings"]
    return found


def storage_root() -> Path:
    return settings().storage_root


# --- the document and the session ----------------------------------------------------------------

@api.get("/openapi.json")
def openapi() -> Response:
    from web.openapi import document

    return jsonify(document(PREFIX, "Corral REST API", "1"))


@endpoint(api, "POST", "/login", "Trade a user name and password for a token", body=LoginBody,
          returns=OBJECT)
@auth.public
@auth.csrf_exempt
def api_login(body: LoginBody) -> Any:
    return call("registry", "authenticate", username=body.username, password=body.password)


# --- the farm ------------------------------------------------------------------------------------

@endpoint(api, "GET", "/overview", "Workers by state, queues, services, finish reports set aside")
def overview() -> Any:
    return call("registry", "farm_overview")


@endpoint(api, "GET", "/workers", "Every worker the registry knows", returns=LIST)
def workers() -> Any:
    return call("registry", "list_workers")


@endpoint(api, "POST", "/workers/<worker_id>/state", "Drain, disable, enable or stop a worker",
          role=Role.WRANGLER, body=WorkerStateBody)
def worker_state(worker_id: str, body: WorkerStateBody) -> Any:
    return set_worker_state(worker_id, body.state, body.now)


def set_worker_state(worker_id: str, state: str, now: bool = False) -> Any:
    """The registry's worker control; a clear 409 while the registry does not offer it."""
    from nameko.exceptions import MethodNotFound

    try:
        return call("registry", "set_worker_wanted_state", worker_id=worker_id, state=state,
                    now=now)
    except MethodNotFound:
        raise HttpError(409, "this registry cannot drain or disable workers yet "
                             "(set_worker_wanted_state): upgrade the registry service") from None


@endpoint(api, "GET", "/hosts", "Each host's totals, reservations and what is free", returns=LIST)
def hosts() -> Any:
    return call("resource_negotiator", "list_hosts")


@endpoint(api, "GET", "/services", "Services and when each last reported in", returns=LIST)
def services() -> Any:
    return call("registry", "list_services")


@endpoint(api, "GET", "/licences", "Licence pools: total, held by Corral, outside, free",
          returns=LIST)
def licences() -> Any:
    return call("license", "list_pools")


@endpoint(api, "PUT", "/licences/<name>", "Set a licence pool's count", role=Role.WRANGLER,
          body=LicenceBody)
def set_licence(name: str, body: LicenceBody) -> Any:
    return call("license", "set_pool", name=name, total=body.total, per_host=body.per_host)


@endpoint(api, "DELETE", "/licences/<name>", "Remove a licence pool", role=Role.WRANGLER)
def remove_licence(name: str) -> Any:
    removed = call("license", "remove_pool", name=name)
    if removed is None:
        raise HttpError(404, f"no licence pool named {name!r}")
    return removed


# --- jobs ----------------------------------------------------------------------------------------

@endpoint(api, "GET", "/jobs", "Jobs, newest first, by state, user and name", query=JobsQuery)
def jobs(query: JobsQuery) -> Any:
    return list_jobs(query)


def list_jobs(query: JobsQuery) -> Any:
    kwargs: dict[str, Any] = {"state": query.state, "user": query.user, "page": query.page,
                              "page_size": query.page_size}
    if query.name:
        kwargs["name_pattern"] = query.name
    return call("scheduler", "list_jobs", **kwargs)


IDEMPOTENCY = {"Idempotency-Key": "The submission's key (the spec's `submission_key`): "
               "sending the same submission again under it, after a timeout say, returns the "
               "job the first one made instead of making another."}


def _keyed(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the Idempotency-Key header as its submission key; the header and a
    different `submission_key` in the body together are refused."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return spec
    if not 1 <= len(key) <= 200 or not key.isprintable() or not key.isascii() \
            or key != key.strip():
        raise HttpError(400, "Idempotency-Key: must be 1 to 200 printable ASCII characters "
                        "without spaces at its ends", "Idempotency-Key")
    if spec.get("submission_key") not in (None, key):
        raise HttpError(400, "Idempotency-Key: differs from the body's submission_key "
                        f"{spec['submission_key']!r}; send one of them", "Idempotency-Key")
    return {**spec, "submission_key": key}


@endpoint(api, "POST", "/jobs", "Submit a job spec (the same JSON as the RPC's)",
          role=Role.ARTIST, body=JobSpec, headers=IDEMPOTENCY)
def submit(body: JobSpec) -> Any:
    # The scheduler makes the job the caller's (only a wrangler names another user).
    return call("scheduler", "submit_job", spec=_keyed(request.get_json()))


@endpoint(api, "POST", "/templates/<name>", "Submit a job from a template (blender, "
          "blender-movie, python) and its command-line arguments", role=Role.ARTIST,
          body=TemplateBody, headers=IDEMPOTENCY)
def submit_template(name: str, body: TemplateBody) -> Any:
    spec = template_from_args(name, body.args)
    if body.user:
        spec["user"] = body.user
    return call("scheduler", "submit_job", spec=_keyed(spec))


@endpoint(api, "GET", "/jobs/<int:job_id>", "A job, its counts, ETA and a page of its tasks",
          query=JobQuery)
def job(job_id: int, query: JobQuery) -> Any:
    return call("scheduler", "get_job", job_id=job_id, task_limit=query.task_limit,
                task_offset=query.task_offset)


def act_on_job(job_id: int, method: str, **kwargs: Any) -> Any:
    """One job operation; the scheduler lets only its owner or a wrangler do it (403)."""
    return call("scheduler", method, job_id=job_id, **kwargs)


def act_on_task(task_id: int, method: str) -> Any:
    return call("scheduler", method, task_id=task_id)


@endpoint(api, "POST", "/jobs/<int:job_id>/cancel", "Cancel a job (its processes die at once)",
          role=Role.ARTIST)
def cancel_job(job_id: int) -> Any:
    return act_on_job(job_id, "cancel_job")


@endpoint(api, "POST", "/jobs/<int:job_id>/pause", "Pause a job (kill: stop its running tasks)",
          role=Role.ARTIST, body=PauseBody)
def pause_job(job_id: int, body: PauseBody) -> Any:
    return act_on_job(job_id, "pause_job", kill=body.kill)


@endpoint(api, "POST", "/jobs/<int:job_id>/resume", "Resume a paused job", role=Role.ARTIST)
def resume_job(job_id: int) -> Any:
    return act_on_job(job_id, "resume_job")


@endpoint(api, "POST", "/jobs/<int:job_id>/retry", "Run a job's failed tasks again",
          role=Role.ARTIST)
def retry_job(job_id: int) -> Any:
    return act_on_job(job_id, "retry_job")


@endpoint(api, "POST", "/jobs/<int:job_id>/priority", "Move a job to another priority",
          role=Role.ARTIST, body=PriorityBody)
def set_priority(job_id: int, body: PriorityBody) -> Any:
    return act_on_job(job_id, "set_priority", priority=body.priority)


@endpoint(api, "POST", "/jobs/bulk", "One operation on every job matching a filter",
          role=Role.ARTIST, body=BulkBody)
def bulk(body: BulkBody) -> Any:
    wanted = body.model_dump()
    if not any(wanted[key] for key in ("user", "state", "name_pattern", "job_ids")):
        raise HttpError(400, "body: give at least one filter (user, state, name_pattern, "
                             "job_ids)", "body")
    # Each job's operation is checked by the scheduler: an artist's reach only their own.
    return call("scheduler", "bulk", **wanted)


# --- tasks ---------------------------------------------------------------------------------------

@endpoint(api, "GET", "/tasks/<int:task_id>", "A task with every attempt")
def task(task_id: int) -> Any:
    return call("scheduler", "get_task", task_id=task_id)


@endpoint(api, "GET", "/tasks/<int:task_id>/why", "Why a task is where it is (reason and code)")
def why(task_id: int) -> Any:
    return call("scheduler", "why_task", task_id=task_id)


@endpoint(api, "POST", "/tasks/<int:task_id>/cancel", "Cancel one task", role=Role.ARTIST)
def cancel_task(task_id: int) -> Any:
    return act_on_task(task_id, "cancel_task")


@endpoint(api, "POST", "/tasks/<int:task_id>/retry", "Run a failed task again", role=Role.ARTIST)
def retry_task(task_id: int) -> Any:
    return act_on_task(task_id, "retry_task")


@endpoint(api, "POST", "/tasks/<int:task_id>/requeue", "Put a task back at the head of its band",
          role=Role.ARTIST)
def requeue_task(task_id: int) -> Any:
    return act_on_task(task_id, "requeue_task")


def task_log(task_id: int, query: LogQuery) -> dict[str, Any]:
    """A piece of a task's log file (under the storage root, whatever the task says)."""
    found = call("scheduler", "get_task", task_id=task_id)
    attempt = query.attempt or int(found["attempt"])
    root = storage_root()
    path = task_log_path(root, int(found["job_id"]), task_id, attempt)
    try:
        if query.offset is not None:
            piece = files.read_range(root, path, query.offset, query.length)
        else:
            piece = files.tail(root, path, query.tail or settings().log_tail_bytes)
    except FileNotFoundError:
        piece = {"offset": 0, "size": 0, "text": ""}
    return {"task_id": task_id, "attempt": attempt, "state": found["state"], **piece}


@endpoint(api, "GET", "/tasks/<int:task_id>/log", "A task's log: its tail, or a range",
          query=LogQuery)
def log(task_id: int, query: LogQuery) -> Any:
    return task_log(task_id, query)


@endpoint(api, "GET", "/tasks/<int:task_id>/result", "The JSON result a task wrote")
def result(task_id: int) -> Any:
    found = call("scheduler", "get_task", task_id=task_id)
    return {"task_id": task_id, "state": found["state"], "result": found.get("result")}


@endpoint(api, "GET", "/tasks/<int:task_id>/thumbnail", "The last frame a render task wrote",
          produces="image/png,image/jpeg")
def thumbnail(task_id: int) -> Any:
    found = call("scheduler", "get_task", task_id=task_id)
    path = files.last_frame(storage_root(), found)
    if path is None:
        raise HttpError(404, f"task {task_id} has written no frame under the storage root yet")
    return _send(path, files.IMAGE_TYPES[path.suffix.lower()])


# --- files ---------------------------------------------------------------------------------------

def _send(path: Path, mimetype: str, download_name: str | None = None) -> Response:
    chunks, size = files.stream(storage_root(), path)
    response = Response(chunks, mimetype=mimetype, direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    response.headers["X-Content-Type-Options"] = "nosniff"
    if download_name:
        response.headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    return response


@endpoint(api, "PUT", "/files/<path:relative>", "Upload a file under uploads/<your name>/; a "
          "job spec names it by the returned path", role=Role.ARTIST, query=UploadQuery,
          raw_body="application/octet-stream")
def upload(relative: str, query: UploadQuery) -> Any:
    who = auth.require(Role.ARTIST)
    root = storage_root()
    target, size = files.save(root, f"{UPLOADS}/{who.user}/{relative}", request.stream,
                              settings().web.upload_limit_bytes, overwrite=query.overwrite)
    return {"path": str(target), "relative": str(target.relative_to(Path(
        files.contain(root, root)))), "size": size}


@endpoint(api, "GET", "/files/<path:relative>", "Download a file under the storage root (a "
          "task's output, an upload)", produces="application/octet-stream")
def download(relative: str) -> Any:
    path = files.inside(storage_root(), relative)
    return _send(path, "application/octet-stream", download_name=path.name)


@endpoint(api, "GET", "/audit", "The audit log: who did what, when, from where", role=Role.ADMIN,
          query=AuditQuery, returns=LIST)
def audit(query: AuditQuery) -> Any:
    return call("registry", "list_audit", limit=query.limit)


@api.after_request
def _no_store(response: Response) -> Response:
    # Answers depend on who asks: never cached by a proxy between.
    response.headers.setdefault("Cache-Control", "no-store")
    return response
