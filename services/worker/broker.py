"""Connects a worker or a pool to the first of the farm's broker nodes that answers, in turn.

On a RabbitMQ cluster `amqp_uri` names every node (`;` between them): a connection is made to
the node that answered last time, else to each of the others in turn, so a node going down
costs one reconnect to the next, never a restart.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractConnection

from shared.rpc import safe_uri


class BrokerNodes:
    """The farm's broker nodes, and which of them to try first."""

    def __init__(self, uris: tuple[str, ...]) -> None:
        if not uris:
            raise ValueError("no broker URL given")
        self.uris = uris
        self._first = 0

    async def connect(self, timeout: float) -> AbstractConnection:  # noqa: ASYNC109
        """A connection to the first node that answers; ConnectionError naming each that did not."""
        failures = []
        for _ in self.uris:
            uri = self.uris[self._first]
            try:
                return await aio_pika.connect(uri, timeout=timeout)
            except Exception as exc:
                failures.append(f"{safe_uri(uri)}: {exc}")
                self._first = (self._first + 1) % len(self.uris)
        raise ConnectionError("; ".join(failures))
