"""How the monitor turns what went wrong into an HTTP status and a JSON body that names it.

    400  a request field is invalid (the body's `field` names it), or a spec the scheduler refused
    401  no valid login or token            403  the role or the owner does not allow it
    404  no such job, task, worker or file  409  the object's state does not allow it
    413  an upload over the limit            503  the broker or a service did not answer in time
    502  a service failed on a bug of its own (its RemoteError), never passed off as ours
"""

from __future__ import annotations

import os
from typing import Any

from nameko.exceptions import RemoteError, UnknownService
from pydantic import ValidationError

from shared.errors import (
    DatabaseError,
    InvalidArgument,
    InvalidSpec,
    InvalidState,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    StaleLease,
    Unauthenticated,
)
from web.files import OutsideStorage, TooLarge
from web.rpc import ServiceUnavailable


class HttpError(Exception):
    """An error the monitor itself answers with: a status, a message, maybe the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def field_of(error: ValidationError, prefix: str = "") -> tuple[str, str]:
    """The dotted path of a validation error's first field, and what is wrong with it."""
    first = error.errors()[0]
    path = ""
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    where = f"{prefix}.{path}" if prefix and path else prefix or path or "body"
    message = "is required" if first["type"] == "missing" else str(first["msg"])
    return where, message.replace("Value error, ", "")


def describe(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and JSON body for an exception, or (500, ...) for one nobody expected."""
    body: dict[str, Any]
    if isinstance(exc, HttpError):
        body = {"error": exc.message}
        if exc.field:
            body["field"] = exc.field
        return exc.status, body
    if isinstance(exc, ValidationError):
        where, message = field_of(exc)
        return 400, {"error": f"{where}: {message}", "field": where}
    if isinstance(exc, InvalidSpec | InvalidArgument):
        # Both messages start with the field or argument at fault.
        return 400, {"error": exc.message, "field": exc.message.split(":", 1)[0]}
    if isinstance(exc, DatabaseError):
        return 503, {"error": exc.message}
    if isinstance(exc, FileNotFoundError) and exc.filename:
        # The OS's message names the absolute path; the caller gets the file's name only.
        return 404, {"error": f"no such file: {os.path.basename(str(exc.filename))}"}
    table: list[tuple[type[BaseException], int]] = [
        (Unauthenticated, 401), (PermissionDenied, 403), (NotFound, 404), (FileNotFoundError, 404),
        (OutsideStorage, 404), (InvalidState, 409), (StaleLease, 409), (LimitExceeded, 409),
        (FileExistsError, 409), (TooLarge, 413),
    ]
    for kind, status in table:
        if isinstance(exc, kind):
            return status, {"error": str(exc)}
    if isinstance(exc, ServiceUnavailable):
        return 503, {"error": exc.message, "service": exc.service}
    if isinstance(exc, UnknownService):
        return 503, {"error": f"the {exc} service is not running"}
    if isinstance(exc, RemoteError):
        return 502, {"error": f"a service failed: {exc.exc_type}: {exc.value}"}
    return 500, {"error": f"internal error: {type(exc).__name__}"}
