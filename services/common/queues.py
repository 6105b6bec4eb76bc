"""Nameko's entrypoints with their queues as `queue_type` says: quorum queues on a RabbitMQ cluster.

Every Corral service takes `rpc`, `consume`, `event_handler` and `ServiceRpc` from here rather
than from nameko. Each shared durable queue (a service's `rpc-<service>` queue, its reliable
event queues, the finish reports) is declared with `shared.bands.queue_arguments`, the arguments
the workers and the scheduler's publisher give the same queues. What is one client's own stays
classic: exclusive or auto-delete queues (a broadcast handler's, which quorum queues cannot be),
and the reply queue of a service's calls to others, which is also made transient here, so that
when its node goes down RabbitMQ drops it and the service declares it afresh on a node that is
up (a durable classic queue whose node is down cannot be declared anywhere until it returns).
"""

from __future__ import annotations

import logging
from typing import Any

import nameko.rpc
from kombu import Queue
from nameko import config
from nameko.events import EventHandler
from nameko.exceptions import ReplyQueueExpiredWithPendingReplies
from nameko.messaging import Consumer
from nameko.rpc import ReplyListener, RpcConsumer
from nameko.rpc import ServiceRpc as NamekoServiceRpc

from shared.bands import queue_arguments
from shared.config import settings_from_mapping

log = logging.getLogger("corral.queues")


def configured_queue_type() -> str:
    """`CORRAL.queue_type` of the running service's config (checked like every setting)."""
    return settings_from_mapping(config).queue_type


def typed(queue: Queue) -> Queue:
    """`queue` with the configured type's arguments, when it is shared and durable."""
    if not queue.durable or queue.exclusive or queue.auto_delete:
        return queue
    extra = queue_arguments(configured_queue_type())
    if not extra:
        return queue
    return Queue(queue.name, exchange=queue.exchange, routing_key=queue.routing_key,
                 durable=True, queue_arguments={**(queue.queue_arguments or {}), **extra})


class TypedRpcConsumer(RpcConsumer):  # type: ignore[misc]
    """The service's `rpc-<service>` queue, of the configured type."""

    def setup(self) -> None:
        super().setup()
        self.queue = typed(self.queue)
        self.consumer.queues = [self.queue]


class Rpc(nameko.rpc.Rpc):  # type: ignore[misc]
    """`@rpc` on a queue of the configured type (named as nameko's: checks look for "Rpc")."""

    rpc_consumer = TypedRpcConsumer()


class TypedConsumer(Consumer):  # type: ignore[misc]
    """`@consume` of a queue of the configured type."""

    def setup(self) -> None:
        self.queue = typed(self.queue)
        super().setup()


class TypedEventHandler(EventHandler):  # type: ignore[misc]
    """`@event_handler` whose reliable (durable, shared) queue is of the configured type."""

    def setup(self) -> None:
        super().setup()
        self.queue = typed(self.queue)
        self.consumer.queues = [self.queue]


class TransientReplyListener(ReplyListener):  # type: ignore[misc]
    """Nameko's reply listener, but its queue is transient, and lost replies fail their calls.

    Nameko ends the whole service when it reconnects and finds its reply queue gone with calls
    still waiting; here each waiting call gets that error instead, and the service goes on.
    """

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


class ServiceRpc(NamekoServiceRpc):  # type: ignore[misc]
    reply_listener = TransientReplyListener()


rpc: Any = Rpc.decorator
consume: Any = TypedConsumer.decorator
event_handler: Any = TypedEventHandler.decorator
