"""RPC replies that cannot be sent are dropped with a log line instead of ending the service.

Nameko publishes an RPC's reply with a short retry policy and, when the broker is away for longer
(a broker restart while a call was being answered), the publish error escapes into the worker
thread and nameko kills the whole container: a scheduler that answered a call at the wrong moment
was gone for good. The caller of such a call has lost its reply queue with the same outage and
times out, as it does for any unanswered call, and every handler a caller may retry is
idempotent; so the reply is dropped, the service stays up, and its consumers reconnect as usual.
`install()` puts this responder in nameko's place; every Corral service calls it at import.
"""

from __future__ import annotations

import logging
from typing import Any

import amqp.exceptions
import kombu.exceptions
import nameko.rpc

log = logging.getLogger("corral.rpc")

BROKER_ERRORS = (kombu.exceptions.OperationalError, amqp.exceptions.ConnectionError,
                 ConnectionError, OSError)


class DroppingResponder(nameko.rpc.Responder):  # type: ignore[misc]
    """Nameko's responder, but a reply the broker cannot take now is logged and dropped."""

    def send_response(self, result: Any, exc_info: Any) -> tuple[Any, Any]:
        try:
            sent: tuple[Any, Any] = super().send_response(result, exc_info)
            return sent
        except BROKER_ERRORS as exc:
            method = self.message.delivery_info.get("routing_key", "?")
            log.warning("could not send the reply to %s (%s): the broker is away; the caller "
                        "will time out and may ask again", method, exc)
            return result, exc_info


def install() -> None:
    """Make nameko's RPC entrypoints reply through DroppingResponder (idempotent)."""
    nameko.rpc.Responder = DroppingResponder
