"""The monitor's calls to the farm's services, each carrying the token of whoever is asking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app

from web.auth import rpc_token
from web.rpc import RpcClient


def client() -> RpcClient:
    rpc: RpcClient = current_app.extensions["corral_rpc"]
    return rpc


def call(service: str, method: str, **kwargs: Any) -> Any:
    """`service.method(**kwargs)` for the person behind this request (or the monitor's reads)."""
    return client().call(service, method, token=rpc_token(), **kwargs)


def answer_or_error(thunk: Callable[[], Any]) -> tuple[Any, str | None]:
    """The answer, or None and why not: a page shows what it has when one service is down.

    Only errors that mean something to a person (a service down, not found, not allowed) are
    turned into text; a bug still fails the request.
    """
    from web.errors import describe

    try:
        return thunk(), None
    except Exception as exc:  # shown on the page instead of failing it
        status, body = describe(exc)
        if status == 500:
            raise
        return None, str(body["error"])


def call_or_none(service: str, method: str, **kwargs: Any) -> tuple[Any, str | None]:
    return answer_or_error(lambda: call(service, method, **kwargs))


def calls_or_none(*calls: tuple[str, str, dict[str, Any]]) -> list[tuple[Any, str | None]]:
    """Like call_or_none for several calls, sent together and answered together: a page that
    asks four services waits for the slowest, not for the four in turn."""
    outcomes = client().call_many(list(calls), token=rpc_token())

    def returning(outcome: Any) -> Callable[[], Any]:
        def one() -> Any:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return one

    return [answer_or_error(returning(outcome)) for outcome in outcomes]
