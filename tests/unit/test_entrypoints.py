"""The hardened nameko entrypoints: a reply or acknowledgement on a connection that has just
gone is logged, not fatal; and every service uses them rather than nameko's own."""

import ast
from typing import Any

import nameko.rpc
import pytest

from services.common import entrypoints
from tests.farm import ROOT


class GoneConsumer:
    """A queue consumer whose connection was reset under it."""

    def ack_message(self, message: Any) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    requeue_message = ack_message


class Message:
    delivery_info = {"routing_key": "corral.reports"}


@pytest.mark.parametrize("error", [None, (RuntimeError, RuntimeError("boom"), None)])
def test_an_acknowledgement_on_a_reset_connection_does_not_raise(error: Any) -> None:
    consumer = entrypoints.Consumer("corral.reports", requeue_on_error=True)
    consumer.consumer = GoneConsumer()
    consumer.handle_message_processed(Message(), None, error)  # logged, not raised


def test_a_reply_on_a_reset_connection_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    def reset(*_: Any) -> Any:
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(nameko.rpc.RpcConsumer, "handle_result", reset)
    result = entrypoints.RpcConsumer().handle_result(Message(), {"ok": 1}, None)
    assert result == ({"ok": 1}, None)


def test_other_errors_still_reach_nameko(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> Any:
        raise ValueError("a bug, not a lost connection")

    monkeypatch.setattr(nameko.rpc.RpcConsumer, "handle_result", broken)
    with pytest.raises(ValueError):
        entrypoints.RpcConsumer().handle_result(Message(), None, None)


HARDENED = {"nameko.rpc": {"rpc", "Rpc", "ServiceRpc", "ClusterRpc"},
            "nameko.messaging": {"consume", "Consumer"},
            "nameko.events": {"event_handler", "EventHandler"}}


def test_no_service_takes_nameko_s_own_entrypoints() -> None:
    """One service mixing nameko's @rpc with ours would have two consumers on its queue, each
    knowing half its methods; and on a quorum farm nameko's would declare its queue classic
    (RabbitMQ refuses two declares of one queue that differ)."""
    offenders = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        if path.name == "entrypoints.py" and path.parent.name == "common":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in HARDENED:
                taken = {alias.name for alias in node.names} & HARDENED[node.module]
                if taken:
                    offenders.append(f"{path.relative_to(ROOT)}: {', '.join(sorted(taken))}")
    assert not offenders, offenders


def test_the_scheduler_service_runs_on_the_hardened_entrypoints() -> None:
    from services.scheduler.service import SchedulerService

    kinds = {type(entrypoint) for method in vars(SchedulerService).values()
             for entrypoint in getattr(method, "nameko_entrypoints", ())}
    assert entrypoints.Rpc in kinds and entrypoints.Consumer in kinds
    assert not kinds & {nameko.rpc.Rpc}
