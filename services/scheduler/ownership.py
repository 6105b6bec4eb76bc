"""Whose job or task a scheduler call names, the submitter a job gets, and what of a task's env a caller sees.

These are the scheduler's parts of its access rules (services.common.access): an artist acts only
on their own jobs (a wrangler on every job), a submitted job belongs to the token's user (only a
wrangler may submit for someone else: a pipeline's service account, say), and env values reach
only a task's owner and wranglers; everyone else sees the names with the values hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.scheduler.store import Job, Task
from shared.db import Store
from shared.errors import NotFound, PermissionDenied
from shared.identity import Identity, Role


def _coerce_id(value: Any, what: str) -> int:
    # Validation of the argument itself is the method's; a value that is no id names no owner.
    if isinstance(value, bool) or not isinstance(value, int):
        raise NotFound(f"{what} {value!r} does not exist")
    return value


def job_user(store: Store, job_id: Any) -> str:
    with store.read() as session:
        job = session.get(Job, _coerce_id(job_id, "job"))
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return job.user


def task_user(store: Store, task_id: Any) -> str:
    with store.read() as session:
        task = session.get(Task, _coerce_id(task_id, "task"))
        if task is None:
            raise NotFound(f"task {task_id} does not exist")
        return task.user


def job_owner(service: Any, arguments: Mapping[str, Any]) -> str:
    return job_user(service.core.store, arguments["job_id"])


def task_owner(service: Any, arguments: Mapping[str, Any]) -> str:
    return task_user(service.core.store, arguments["task_id"])


def submitted_by_caller(service: Any, identity: Identity,
                        arguments: dict[str, Any]) -> dict[str, Any]:
    """The spec's `user` is the caller's; naming another user needs a wrangler."""
    spec = arguments.get("spec")
    if not isinstance(spec, dict):
        return arguments  # the spec's own validation names what is wrong with it
    named = spec.get("user")
    if named is None:
        return {**arguments, "spec": {**spec, "user": identity.user}}
    if named != identity.user and not identity.at_least(Role.WRANGLER):
        raise PermissionDenied(f"user: {identity.user} may submit jobs only as themselves, "
                               f"not as {named!r} (a wrangler may submit for anyone)")
    return arguments


def _hide_env(env: Any) -> Any:
    return {name: None for name in env} if isinstance(env, dict) else env


def _sees_env(identity: Identity, owner: Any) -> bool:
    return identity.at_least(Role.WRANGLER) or identity.user == owner


def _trimmed(item: dict[str, Any], identity: Identity) -> dict[str, Any]:
    if _sees_env(identity, item.get("user")) or not item.get("env"):
        return item
    return {**item, "env": _hide_env(item["env"]), "env_hidden": True}


def env_for_owner(service: Any, identity: Identity, reply: Any) -> Any:
    """A job or task as the caller may see it: env values hidden from others than its owner."""
    if not isinstance(reply, dict):
        return reply
    trimmed = _trimmed(reply, identity)
    if isinstance(reply.get("tasks"), list):
        trimmed = {**trimmed, "tasks": [_trimmed(task, identity) if isinstance(task, dict)
                                        else task for task in reply["tasks"]]}
    return trimmed
