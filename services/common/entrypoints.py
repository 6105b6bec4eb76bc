"""nameko's `rpc`, `consume` and `event_handler`, hardened: a reply or an acknowledgement that
fails because the broker connection has just gone is logged instead of ending the service.

nameko sends an RPC's reply and acknowledges a message in the worker thread that ran the
handler; when the connection was reset meanwhile (a broker restart, `close_all_connections`),
that raises, and nameko kills the whole container for an error in a managed thread: a scheduler
that lived through the outage died of its last acknowledgement. The broker redelivers what was
not acknowledged once the connection is back (every handler is idempotent), so nothing is
lost by going on. Every service uses these in place of nameko's own (a contract test checks).

They also declare their queues as `CORRAL.queue_type` says (quorum queues on a RabbitMQ cluster):
each shared durable queue (a service's `rpc-<service>` queue, its reliable event queues, the
finish reports) with `shared.bands.queue_arguments`, the arguments the workers and the
scheduler's publisher give the same queues. What is one client's own stays classic: exclusive or
auto-delete queues (a broadcast handler's: quorum queues can be neither), and the reply queue of
a service's calls to others (`ServiceRpc`), which is made transient too, so that when its node
goes down RabbitMQ drops it and the service declares it afresh on a node that is up (a durable
classic queue whose node is down cannot be declared anywhere until that node is back).
"""

from __future__ import annotations

import logging
from typing import Any

import amqp.exceptions
import kombu.exceptions
import nameko.events
import nameko.messaging
import nameko.rpc
from kombu.entity import Queue as KombuQueue
from nameko import config
from nameko.exceptions import ReplyQueueExpiredWithPendingReplies

from shared.bands import queue_arguments
from shared.config import settings_from_mapping

log = logging.getLogger(__name__)

BROKER_GONE: tuple[type[BaseException], ...] = (
    OSError, amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError,
    kombu.exceptions.OperationalError)
"""What a reply or acknowledgement on a connection that has gone raises (ConnectionError is
an OSError)."""


def configured_queue_type() -> str:
    """`CORRAL.queue_type` of the running service's config (checked like every setting)."""
    return settings_from_mapping(config).queue_type


Queue: Any = KombuQueue  # kombu is untyped


def typed(queue: Any) -> Any:
    """`queue` with the configured type's arguments, when it is shared and durable."""
    if not queue.durable or queue.exclusive or queue.auto_delete:
        return queue
    extra = queue_arguments(configured_queue_type())
    if not extra:
        return queue
    return Queue(queue.name, exchange=queue.exchange, routing_key=queue.routing_key,
                 durable=True, queue_arguments={**(queue.queue_arguments or {}), **extra})


def _routing_key(message: Any) -> str:
    return str(getattr(message, "delivery_info", {}).get("routing_key", "?"))


class RpcConsumer(nameko.rpc.RpcConsumer):  # type: ignore[misc]
    queue: Any

    def setup(self) -> None:
        super().setup()
        self.queue = typed(self.queue)
        self.consumer.queues = [self.queue]

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
    queue: Any

    def setup(self) -> None:
        self.queue = typed(self.queue)
        super().setup()


class EventHandler(_SurvivesBrokerLoss, nameko.events.EventHandler):  # type: ignore[misc]
    queue: Any

    def setup(self) -> None:
        super().setup()
        self.queue = typed(self.queue)
        self.consumer.queues = [self.queue]


class TransientReplyListener(nameko.rpc.ReplyListener):  # type: ignore[misc]
    """nameko's reply listener, but its queue is transient, and lost replies fail their calls.

    nameko ends the whole service when it reconnects and finds its reply queue gone with calls
    still waiting; here each waiting call gets that error instead, and the service goes on.
    """

    queue: Any
    pending: dict[str, Any]

    def setup(self) -> None:
        super().setup()
        # Changed in place: the service's RPC publishers declare this very queue object too.
        self.queue.durable = False

    def check_for_lost_replies(self) -> None:
        try:
            super().check_for_lost_replies()
        except ReplyQueueExpiredWithPendingReplies as exc:
            pending, self.pending = self.pending, {}
            log.warning("the reply queue went with its broker node: %d calls fail", len(pending))
            for waiting in pending.values():
                waiting.send_exception(exc)


class ServiceRpc(nameko.rpc.ServiceRpc):  # type: ignore[misc]
    reply_listener = TransientReplyListener()


def is_rpc(entrypoint: Any) -> bool:
    """Whether an entrypoint is an RPC method's: ours, or nameko's own in a service written
    without these (which `services.common.access` must still see to refuse it its rule)."""
    return isinstance(entrypoint, nameko.rpc.Rpc)


rpc = Rpc.decorator
consume = Consumer.decorator
event_handler = EventHandler.decorator
