"""nameko's `rpc`, `consume` and `event_handler`, hardened: a reply or an acknowledgement that
fails because the broker connection has just gone is logged instead of ending the service.

nameko sends an RPC's reply and acknowledges a message in the worker thread that ran the
handler; when the connection was reset meanwhile (a broker restart, `close_all_connections`),
that raises, and nameko kills the whole container for an error in a managed thread: a scheduler
that lived through the outage died of its last acknowledgement. The broker redelivers what was
not acknowledged once the connection is back (every handler is idempotent), so nothing is
lost by going on. Every service uses these in place of nameko's own (a contract test checks).
"""

from __future__ import annotations

import logging
from typing import Any

import amqp.exceptions
import kombu.exceptions
import nameko.events
import nameko.messaging
import nameko.rpc

log = logging.getLogger(__name__)

BROKER_GONE: tuple[type[BaseException], ...] = (
    OSError, amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError,
    kombu.exceptions.OperationalError)
"""What a reply or acknowledgement on a connection that has gone raises (ConnectionError is
an OSError)."""


def _routing_key(message: Any) -> str:
    return str(getattr(message, "delivery_info", {}).get("routing_key", "?"))


class RpcConsumer(nameko.rpc.RpcConsumer):  # type: ignore[misc]
    def handle_result(self, message: Any, result: Any, exc_info: Any) -> Any:
        try:
            return super().handle_result(message, result, exc_info)
        except BROKER_GONE as exc:
            log.warning("reply to %s not sent or not acknowledged (%s): the broker gives the "
                        "call again once it is back", _routing_key(message), exc)
            return result, exc_info


class Rpc(nameko.rpc.Rpc):  # type: ignore[misc]
    rpc_consumer = RpcConsumer()


class _SurvivesBrokerLoss:
    def handle_message_processed(self, message: Any, result: Any = None,
                                 exc_info: Any = None) -> None:
        try:
            super().handle_message_processed(message, result, exc_info)  # type: ignore[misc]
        except BROKER_GONE as exc:
            log.warning("message from %s not acknowledged (%s): the broker delivers it again "
                        "once it is back", _routing_key(message), exc)


class Consumer(_SurvivesBrokerLoss, nameko.messaging.Consumer):  # type: ignore[misc]
    pass


class EventHandler(_SurvivesBrokerLoss, nameko.events.EventHandler):  # type: ignore[misc]
    pass


def is_rpc(entrypoint: Any) -> bool:
    """Whether an entrypoint is an RPC method's: ours, or nameko's own in a service written
    without these (which `services.common.access` must still see to refuse it its rule)."""
    return isinstance(entrypoint, nameko.rpc.Rpc)


rpc = Rpc.decorator
consume = Consumer.decorator
event_handler = EventHandler.decorator
