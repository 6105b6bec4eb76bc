# An RPC reply the broker cannot take is dropped with a log line, never raised into nameko
# (which would end the service).

import logging
import socket
from types import SimpleNamespace

import nameko.rpc
import pytest
from kombu import Exchange

from services.common import replies


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the probe is closed


def test_a_reply_to_an_absent_broker_is_logged_and_dropped(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    replies.install()
    assert nameko.rpc.Responder is replies.DroppingResponder
    message = SimpleNamespace(
        properties={"content_type": "application/json", "reply_to": "nobody",
                    "correlation_id": "c1"},
        delivery_info={"routing_key": "scheduler.get_job"})
    responder = nameko.rpc.Responder(f"amqp://guest:guest@127.0.0.1:{closed_port()}/",
                                     Exchange("nameko-rpc", type="topic"), message)
    with caplog.at_level(logging.WARNING, logger="corral.rpc"):
        result, exc_info = responder.send_response({"id": 1}, None)
    assert (result, exc_info) == ({"id": 1}, None)
    assert "could not send the reply to scheduler.get_job" in caplog.text
