"""Nameko's RPC wire protocol spoken from asyncio with aio-pika, so the worker needs no eventlet.

A request is a JSON body `{"args": [], "kwargs": {...}}` published to the `nameko-rpc` topic
exchange with routing key `service.method`, `reply_to` naming our reply queue's routing key and a
`correlation_id`; the reply is `{"result": ..., "error": ...}` where `error` is nameko's serialised
exception, turned back into our own error classes when they are registered. The caller's token
travels as nameko's context data does, in the header `nameko.auth_token` (shared.identity).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from nameko.exceptions import deserialize

from shared.errors import DatabaseError  # importing it registers Corral's errors with nameko
from shared.identity import CONTEXT_KEY

RPC_EXCHANGE = "nameko-rpc"


class RpcUnavailable(Exception):
    """The call got no reply in time, or the connection went away: it may be retried."""


class ServiceUnknown(RpcUnavailable):
    """No queue takes requests for that service: it has never run on this broker."""


class ServiceTrouble(RpcUnavailable):
    """The service answered that its database failed the call: nothing was applied, ask again."""


class AsyncRpcClient:
    """One reply queue on one connection; many calls in flight, matched by correlation id."""

    def __init__(self, connection: AbstractConnection, client_name: str = "corral_worker",
                 token: str | None = None) -> None:
        self._connection = connection
        self._client_name = client_name
        self._token = token
        self._routing_key = str(uuid.uuid4())
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None

    @property
    def token(self) -> str | None:
        """The credential this client presents (a worker's heartbeats carry it too)."""
        return self._token

    async def start(self) -> None:
        # on_return_raises: a request nobody can route fails at once instead of timing out.
        self._channel = await self._connection.channel(publisher_confirms=True,
                                                       on_return_raises=True)
        self._exchange = await self._channel.declare_exchange(
            RPC_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        self._queue = await self._channel.declare_queue(
            f"rpc.reply-{self._client_name}-{self._routing_key}", exclusive=True, auto_delete=True)
        await self._queue.bind(self._exchange, routing_key=self._routing_key)
        await self._queue.consume(self._on_reply, no_ack=True)
        self._channel.close_callbacks.add(self._on_close)

    @property
    def closed(self) -> bool:
        """Whether this client's channel is gone (it can make no more calls)."""
        return self._channel is None or self._channel.is_closed

    def _on_close(self, *_args: Any) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RpcUnavailable("connection to the broker closed"))
        self._pending.clear()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(json.loads(message.body))

    def _headers(self, correlation_id: str) -> dict[str, Any]:
        headers: dict[str, Any] = {"nameko.call_id_stack": [f"{self._client_name}.{correlation_id}"]}
        if self._token is not None:
            headers[f"nameko.{CONTEXT_KEY}"] = self._token
        return headers

    async def call(self, service: str, method: str, *, timeout: float,  # noqa: ASYNC109
                   **kwargs: Any) -> Any:
        """Call `service.method(**kwargs)`; raise the service's error, or RpcUnavailable."""
        if self._exchange is None or self._channel is None or self._channel.is_closed:
            raise RpcUnavailable("not connected")
        correlation_id = str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        message = aio_pika.Message(
            json.dumps({"args": [], "kwargs": kwargs}).encode(),
            content_type="application/json", correlation_id=correlation_id,
            reply_to=self._routing_key, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=self._headers(correlation_id))
        try:
            await self._exchange.publish(message, routing_key=f"{service}.{method}",
                                         mandatory=True, timeout=timeout)
            reply = await asyncio.wait_for(future, timeout)
        except aio_pika.exceptions.DeliveryError as exc:
            # Returned as unroutable: no queue is bound for this service at all.
            raise ServiceUnknown(f"{service}.{method}: no such service ({exc})") from None
        except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
            raise RpcUnavailable(f"{service}.{method}: {type(exc).__name__} {exc}") from None
        finally:
            self._pending.pop(correlation_id, None)
        if reply.get("error"):
            error = deserialize(reply["error"])
            if isinstance(error, DatabaseError):
                raise ServiceTrouble(f"{service}.{method}: {error}") from None
            raise error
        return reply.get("result")
