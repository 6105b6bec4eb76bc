"""A small synchronous client of nameko's RPC wire format for the monitor's gunicorn threads.

Each thread keeps one broker connection with its own reply queue, so calls never share a channel
and need neither eventlet nor nameko's standalone client. Every call carries the caller's token
in nameko's context data (`nameko.<key>` headers) and gets an answer, the service's own error, or
`ServiceUnavailable` within the timeout: the monitor never hangs on a service that is down.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import amqp
import amqp.exceptions
from nameko.exceptions import deserialize

import shared.errors  # noqa: F401  (registers Corral's errors so they deserialise as themselves)

RPC_EXCHANGE = "nameko-rpc"
CLIENT_NAME = "corral_web"


class ServiceUnavailable(Exception):
    """The broker or a service did not answer in time; the message says which and why."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service
        self.message = message

    def __str__(self) -> str:
        return self.message


def _parse_uri(uri: str) -> dict[str, Any]:
    from kombu.utils.url import url_to_parts

    _transport, host, port, user, password, vhost, _query = url_to_parts(uri)
    return {"host": f"{host or '127.0.0.1'}:{port or 5672}", "userid": user or "guest",
            "password": password or "guest", "virtual_host": vhost or "/"}


class _Channel:
    """One connection, one channel and one exclusive reply queue, used by one thread at a time."""

    def __init__(self, uri: str, connect_timeout: float) -> None:
        self.connection = amqp.Connection(**_parse_uri(uri), connect_timeout=connect_timeout,
                                          heartbeat=0)
        self.connection.connect()
        self.channel = self.connection.channel()
        self.channel.exchange_declare(RPC_EXCHANGE, "topic", durable=True, auto_delete=False)
        self.routing_key = str(uuid.uuid4())
        self.queue = f"rpc.reply-{CLIENT_NAME}-{self.routing_key}"
        self.channel.queue_declare(self.queue, exclusive=True, auto_delete=True)
        self.channel.queue_bind(self.queue, RPC_EXCHANGE, self.routing_key)
        self.replies: dict[str, dict[str, Any]] = {}
        # Only replies someone still waits for are kept: a late one after a timeout is dropped.
        self.waiting: set[str] = set()
        self.channel.basic_consume(self.queue, callback=self._on_reply, no_ack=True)

    def _on_reply(self, message: amqp.Message) -> None:
        correlation_id = message.properties.get("correlation_id")
        if correlation_id in self.waiting:
            self.replies[correlation_id] = json.loads(message.body)

    def consumers_of(self, service: str) -> int | None:
        """How many processes consume the service's RPC queue (None: it was never declared)."""
        probe = self.connection.channel()
        try:
            _name, _messages, consumers = probe.queue_declare(f"rpc-{service}", passive=True)
            return int(consumers)
        except amqp.exceptions.NotFound:
            return None
        finally:
            if probe.is_open:
                probe.close()

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # already gone: nothing to give back
            pass


class RpcClient:
    """Calls `service.method(**kwargs)` over RPC from any thread, within `timeout` seconds."""

    def __init__(self, amqp_uri: str, timeout: float = 2.0, context_key: str = "auth_token") -> None:
        self.amqp_uri = amqp_uri
        self.timeout = timeout
        self.context_key = context_key
        self._local = threading.local()

    def _channel(self, deadline: float) -> _Channel:
        channel: _Channel | None = getattr(self._local, "channel", None)
        if channel is not None and channel.connection.connected:
            return channel
        # On a cluster, each node in turn (`;` between their URLs) until one answers.
        failures = []
        for uri in self.amqp_uri.split(";"):
            try:
                channel = _Channel(uri.strip(), max(0.1, deadline - time.monotonic()))
            except (OSError, amqp.exceptions.AMQPError) as exc:
                failures.append(str(exc))
                continue
            self._local.channel = channel
            return channel
        raise ServiceUnavailable("broker", f"the broker is not reachable ({'; '.join(failures)})")

    def _drop(self) -> None:
        channel: _Channel | None = getattr(self._local, "channel", None)
        if channel is not None:
            channel.close()
        self._local.channel = None

    def call(self, service: str, method: str, token: str | None = None,
             timeout: float | None = None, **kwargs: Any) -> Any:
        """The method's result; its CorralError as itself; ServiceUnavailable when none came."""
        (outcome,) = self.call_many([(service, method, kwargs)], token, timeout)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def call_many(self, calls: list[tuple[str, str, dict[str, Any]]], token: str | None = None,
                  timeout: float | None = None) -> list[Any]:
        """Several calls at once, all sent before any answer is awaited, so a page that needs
        four services waits about as long as the slowest; each call's result, or the exception
        it ended with (its CorralError, or ServiceUnavailable when no answer came in time)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        channel = self._channel(deadline)
        ids = [str(uuid.uuid4()) for _ in calls]
        outcomes: list[Any] = [None] * len(calls)
        try:
            for correlation_id, (service, method, kwargs) in zip(ids, calls, strict=True):
                headers: dict[str, Any] = {
                    "nameko.call_id_stack": [f"{CLIENT_NAME}.{correlation_id}"]}
                if token:
                    headers[f"nameko.{self.context_key}"] = token
                message = amqp.Message(json.dumps({"args": [], "kwargs": kwargs}),
                                       content_type="application/json",
                                       correlation_id=correlation_id,
                                       reply_to=channel.routing_key, delivery_mode=2,
                                       application_headers=headers)
                channel.waiting.add(correlation_id)
                channel.channel.basic_publish(message, RPC_EXCHANGE, f"{service}.{method}")
            while not all(correlation_id in channel.replies for correlation_id in ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    channel.connection.drain_events(timeout=left)
                except TimeoutError:
                    continue
        except (OSError, amqp.exceptions.AMQPError) as exc:
            self._drop()
            return [ServiceUnavailable(service, f"lost the broker while asking the {service} "
                                                f"service ({exc})") for service, _, _ in calls]
        finally:
            for correlation_id in ids:
                channel.waiting.discard(correlation_id)
        for index, (correlation_id, (service, _, _)) in enumerate(zip(ids, calls, strict=True)):
            reply = channel.replies.pop(correlation_id, None)
            if reply is None:
                outcomes[index] = ServiceUnavailable(service,
                                                     self._silence(channel, service, limit))
            elif reply.get("error"):
                outcomes[index] = deserialize(reply["error"])
            else:
                outcomes[index] = reply.get("result")
        return outcomes

    def _silence(self, channel: _Channel, service: str, limit: float) -> str:
        """Why a service did not answer: down (no consumer), never started, or just slow."""
        try:
            consumers = channel.consumers_of(service)
        except Exception:  # the broker went too: say what we know
            self._drop()
            return f"the {service} service did not answer within {limit:g} s"
        if consumers is None:
            return f"the {service} service has never run on this broker"
        if consumers == 0:
            return f"the {service} service is down (nothing takes its requests)"
        return f"the {service} service did not answer within {limit:g} s"

    def close(self) -> None:
        self._drop()
