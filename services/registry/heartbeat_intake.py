"""Takes workers' published heartbeats from their durable queue in batches, on one kept connection.

The registry's `take_heartbeats` timer asks for a batch every BATCH_EVERY seconds: whatever the
broker has delivered since (at most PREFETCH unacknowledged heartbeats), each checked (the
worker credential in its header, the shared.heartbeat.Heartbeat schema; a bad one is logged and
dropped), applied by the caller in one transaction, then acknowledged with one `multiple` ack.
A registry killed before the ack leaves them unacknowledged: the broker gives them to the next
registry, which applies them again, harmlessly (a heartbeat only says "seen").

Before applying, it asks the broker how many heartbeats still wait (a passive declare on the
consuming channel: every delivery sent before the answer has arrived by then). When none wait,
every heartbeat published before the question has been applied: `unheard_seconds` is how long
ago that last was, the registry's own backlog, which the lost sweep does not count as a worker's
silence. Until the first such moment after a start nothing is known, and nobody is declared lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import amqp.exceptions
import kombu.exceptions
from kombu import Connection
from pydantic import ValidationError

from shared.bands import HEARTBEATS_QUEUE, HEARTBEATS_QUEUE_ARGUMENTS, queue_arguments
from shared.errors import Unauthenticated
from shared.heartbeat import Heartbeat
from shared.identity import CONTEXT_KEY, Identity, Role

log = logging.getLogger(__name__)

BATCH_EVERY = 0.15
"""Seconds between batches: how late a heartbeat is applied, at most, on a registry keeping up."""
PREFETCH = 2000
"""Heartbeats the broker may hand over unacknowledged: the largest batch (6 s of 1,000 workers)."""
DRAIN_WAIT = 0.01
"""How long a batch waits for one more delivery before it is taken as complete."""

BROKEN = (amqp.exceptions.ConnectionError, amqp.exceptions.ChannelError,
          kombu.exceptions.OperationalError, ConnectionError, OSError)

Verify = Callable[[object], Identity]
"""Names the caller a token stands for; raises Unauthenticated (TokenVerifier.verify)."""


class HeartbeatIntake:
    """One registry instance's consumer of corral.heartbeats (used from one green thread at a time)."""

    def __init__(self, amqp_uri: str, queue_type: str = "classic",
                 connect_timeout: float = 5) -> None:
        self._uri = amqp_uri
        self._arguments = {**queue_arguments(queue_type), **HEARTBEATS_QUEUE_ARGUMENTS}
        self._connect_timeout = connect_timeout
        self._connection: Connection | None = None
        self._channel: Any = None
        self._delivered: list[Any] = []
        self._caught_up_at: float | None = None  # time.monotonic()
        self._failing = False

    def take(self, verify: Verify, apply: Callable[[list[Heartbeat]], None]) -> int:
        """Apply what has been delivered (one call of `apply`), acknowledge it; how many applied.

        A broken connection is logged and opened again at the next call; an `apply` that
        raises gives the batch back to the queue and raises.
        """
        try:
            if self._channel is None:
                self._open()
            self._drain()
            asked_at = time.monotonic()
            _, waiting, _ = self._channel.queue_declare(HEARTBEATS_QUEUE, passive=True)
        except BROKEN as exc:
            if not self._failing:  # once per outage, not every batch
                log.warning("cannot take heartbeats from %s: %s", HEARTBEATS_QUEUE, exc)
            self._failing = True
            self.close()
            return 0
        if self._failing:
            log.info("taking heartbeats from %s again", HEARTBEATS_QUEUE)
            self._failing = False
        batch, self._delivered = self._delivered, []
        verify_once = _once_per_token(verify)  # a farm's workers share one credential
        beats = [beat for beat in (_read(message, verify_once) for message in batch) if beat]
        try:
            if beats:
                apply(beats)
        except Exception:
            self._settle(batch, requeue=True)
            raise
        self._settle(batch)
        if waiting == 0:
            self._caught_up_at = asked_at
        return len(beats)

    def unheard_seconds(self) -> float | None:
        """How long ago every heartbeat published until then was applied; None: not yet known."""
        if self._caught_up_at is None:
            return None
        return time.monotonic() - self._caught_up_at

    def close(self) -> None:
        """Let go of the connection: what it holds unacknowledged goes back to the queue."""
        connection, self._connection, self._channel = self._connection, None, None
        self._delivered = []
        if connection is not None:
            try:
                connection.release()
            except Exception:  # it is broken already
                pass

    def _open(self) -> None:
        connection = Connection(self._uri, connect_timeout=self._connect_timeout)
        connection.connect()
        channel = connection.channel()
        channel.basic_qos(0, PREFETCH, False)
        channel.queue_declare(HEARTBEATS_QUEUE, durable=True, auto_delete=False,
                              arguments=self._arguments)
        channel.basic_consume(HEARTBEATS_QUEUE, callback=self._delivered_one)
        self._connection, self._channel = connection, channel

    def _delivered_one(self, message: Any) -> None:
        self._delivered.append(message)

    def _drain(self) -> None:
        assert self._connection is not None
        while True:
            try:
                self._connection.drain_events(timeout=DRAIN_WAIT)
            except TimeoutError:
                return

    def _settle(self, batch: list[Any], requeue: bool = False) -> None:
        if not batch:
            return
        tag = batch[-1].delivery_tag
        try:
            if requeue:
                self._channel.basic_nack(tag, multiple=True, requeue=True)
            else:
                self._channel.basic_ack(tag, multiple=True)
        except BROKEN as exc:
            # Unacknowledged on a broken connection: the broker delivers them again.
            log.warning("heartbeats not acknowledged (%s): they come again", exc)
            self.close()


def _once_per_token(verify: Verify) -> Verify:
    """`verify`, asked once per distinct token (of one batch: a revocation counts from the next)."""
    known: dict[str, Identity | Unauthenticated] = {}

    def verified(token: object) -> Identity:
        if not isinstance(token, str):
            return verify(token)  # absent or not a token at all: refused
        if token not in known:
            try:
                known[token] = verify(token)
            except Unauthenticated as exc:
                known[token] = exc
        found = known[token]
        if isinstance(found, Unauthenticated):
            raise found
        return found

    return verified


def _read(message: Any, verify: Verify) -> Heartbeat | None:
    """The heartbeat a message carries, if it is well formed and from the worker credential."""
    headers = getattr(message, "headers", None) or {}
    try:
        identity = verify(headers.get(f"nameko.{CONTEXT_KEY}"))
        if identity.role is not Role.WORKER:
            raise Unauthenticated(f"{identity.user} has the {identity.role} role, not the "
                                  "worker credential")
        return Heartbeat.model_validate(json.loads(message.body))
    except Unauthenticated as exc:
        log.warning("heartbeat refused: %s", exc)
    except (ValueError, ValidationError) as exc:
        log.warning("malformed heartbeat dropped: %s", str(exc).splitlines()[0])
    return None
