"""Publishes task messages to the durable band queues, with publisher confirms.

A message is `{task_id, attempt}` plus, for a task that books resources, what it books
(`resources`, `preferred`), so the worker can book them while its claim is on the way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from kombu import Connection, Queue

from services.scheduler.dispatch import Release
from shared.bands import queue_arguments, queue_name

log = logging.getLogger(__name__)


class BandPublisher:
    """One confirmed channel to the broker; callers serialise their use of it."""

    def __init__(self, amqp_uri: str, queue_type: str = "classic") -> None:
        self.amqp_uri = amqp_uri  # several, `;` between them: kombu fails over among them
        self.queue_arguments = queue_arguments(queue_type)
        self._connection: Connection | None = None
        self._declared: set[str] = set()

    def _producer_channel(self):  # type: ignore[no-untyped-def]
        if self._connection is None or not self._connection.connected:
            self.close()
            self._connection = Connection(self.amqp_uri,
                                          transport_options={"confirm_publish": True},
                                          heartbeat=0)
            self._connection.ensure_connection(max_retries=3, interval_start=0.2)
            self._declared.clear()
        return self._connection.default_channel

    def _declare(self, channel: Any, queue: str) -> None:
        if queue not in self._declared:
            Queue(queue, durable=True, channel=channel,
                  queue_arguments=self.queue_arguments).declare()
            self._declared.add(queue)

    def publish(self, releases: Sequence[Release]) -> list[Release]:
        """Publish each message, waiting for the broker's confirm; return those that made it."""
        published: list[Release] = []
        try:
            channel = self._producer_channel()
            for release in releases:
                queue = queue_name(release.pool, release.band)
                self._declare(channel, queue)
                message: dict[str, Any] = {"task_id": release.task_id,
                                           "attempt": release.attempt}
                if release.wants:
                    message.update(json.loads(release.wants))
                body = json.dumps(message)
                channel.basic_publish(
                    channel.prepare_message(body.encode(), priority=0,
                                            content_type="application/json",
                                            content_encoding="utf-8",
                                            properties={"delivery_mode": 2}),
                    exchange="", routing_key=queue, mandatory=False)
                published.append(release)
        except Exception as exc:  # the broker went away: what was not confirmed is retried later
            log.warning("publishing to band queues failed after %d of %d: %s",
                        len(published), len(releases), exc)
            self.close()
        return published

    def send(self, queue: str, body: dict[str, Any]) -> None:
        """Publish one persistent JSON message to a durable queue, confirmed; raises on failure."""
        try:
            channel = self._producer_channel()
            self._declare(channel, queue)
            channel.basic_publish(
                channel.prepare_message(json.dumps(body).encode(), priority=0,
                                        content_type="application/json",
                                        content_encoding="utf-8",
                                        properties={"delivery_mode": 2}),
                exchange="", routing_key=queue, mandatory=False)
        except Exception:
            self.close()
            raise

    def delete_queues(self, queues: Sequence[str]) -> None:
        """Delete queues nobody reads any more (one that does not exist is fine); raises when
        the broker refuses."""
        try:
            channel = self._producer_channel()
            for queue in queues:
                channel.queue_delete(queue)
        except Exception:
            self.close()
            raise

    def queue_depth(self, queue: str) -> int | None:
        """Messages ready in a queue, or None when the broker cannot tell us."""
        counts = self.queue_counts(queue)
        return None if counts is None else counts[0]

    def queue_counts(self, queue: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of a queue, or None when the broker cannot tell us."""
        try:
            channel = self._producer_channel()
            _, messages, consumers = Queue(queue, channel=channel).queue_declare(passive=True)
            return int(messages), int(consumers)
        except Exception:  # a missing queue closes the channel: start afresh next time
            self.close()
            return None

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # closing a dead connection may itself fail
                pass
        self._connection = None
