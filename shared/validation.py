"""Checks every argument of every RPC method against its signature before the method runs.

One class decorator per service, `@validate_rpc_arguments`, wraps each `@rpc` method: the
arguments are checked strictly against the method's annotations (no 1.5 or "1" for an int, no
None where None is not allowed), against the rules below for arguments of a given name (ids are
integers a database can store, worker and host names are non-empty printable text), and for what
no argument may hold (NUL, lone surrogates, integers past 2^63, non-finite numbers). A refusal
raises InvalidArgument naming the argument, before anything changes; a database error leaves
as DatabaseError, without the statement or its values. Other decorators (an
identity check, say) wrap the method the same way, beside this one.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, Union

from pydantic import ConfigDict, Field, StringConstraints, ValidationError, create_model
from sqlalchemy.exc import SQLAlchemyError

from shared.errors import DatabaseError, InvalidArgument, InvalidSpec
from shared.spec import MAX_INTEGER, check_plain_data

T = TypeVar("T")

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=255,
                                              pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]
"""A name something is known by: a worker, a host, a pool, a lease."""
RecordId = Annotated[int, Field(ge=0, le=MAX_INTEGER)]
PageSize = Annotated[int, Field(ge=1, le=10_000)]

RULES: dict[str, Any] = {
    "task_id": RecordId, "job_id": RecordId, "attempt": RecordId, "task_offset": RecordId,
    "page": Annotated[int, Field(ge=1, le=MAX_INTEGER)], "page_size": PageSize,
    # 0: the job's counts without its tasks (the monitor's lists ask for that).
    "task_limit": Annotated[int, Field(ge=0, le=10_000)],
    "worker_id": Identifier, "host": Identifier, "pool": Identifier, "service": Identifier,
    "name": Identifier, "reservation_id": Identifier, "lease_id": Identifier,
    "lease_token": Identifier, "operation": Identifier,
}
"""Constraints on arguments by name, whichever service takes them."""

_STRICT = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)


def validate_rpc_arguments(service: type[T]) -> type[T]:
    """Wrap every @rpc method of `service` with its argument checks."""
    for name, member in list(vars(service).items()):
        entrypoints = getattr(member, "nameko_entrypoints", ())
        if inspect.isfunction(member) and any(type(e).__name__ == "Rpc" for e in entrypoints):
            setattr(service, name, checked(member))
    return service


def _with_rule(name: str, annotation: Any) -> Any:
    rule = RULES.get(name)
    if rule is None:
        return annotation
    base = typing.get_args(rule)[0]
    options = typing.get_args(annotation)
    if annotation is base:
        return rule
    if typing.get_origin(annotation) in (Union, types.UnionType) and base in options:
        return Union[tuple(rule if option is base else option for option in options)]  # noqa: UP007
    return annotation


def checked(method: Callable[..., T]) -> Callable[..., T]:
    """`method` with its arguments checked first (InvalidArgument naming the one at fault)."""
    signature = inspect.signature(method)
    hints = typing.get_type_hints(method, include_extras=True)
    parameters = list(signature.parameters.values())[1:]  # after self
    fields: dict[str, Any] = {
        parameter.name: (_with_rule(parameter.name, hints.get(parameter.name, Any)),
                         ... if parameter.default is parameter.empty else parameter.default)
        for parameter in parameters}
    model = create_model(f"{method.__name__}_arguments", __config__=_STRICT, **fields)

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"{method.__name__}: {exc}") from None
        given = {name: value for name, value in bound.arguments.items() if name != "self"}
        for name, value in given.items():
            try:
                check_plain_data(value, name)
            except InvalidSpec as exc:
                raise InvalidArgument(exc.message) from None
        try:
            values = model.model_validate(given)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise InvalidArgument(f"{where}: {error['msg']}") from None
        try:
            return method(self, **{name: getattr(values, name) for name in fields})
        except SQLAlchemyError as exc:
            # SQLAlchemy's text holds the statement and the driver's detail, which may quote
            # values (an env, a token): the caller learns what failed, not with what.
            raise DatabaseError(f"{method.__name__}: the database failed: "
                                f"{type(getattr(exc, 'orig', None) or exc).__name__}") from exc

    return wrapper
