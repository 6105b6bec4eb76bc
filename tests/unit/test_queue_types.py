"""Queue types and several brokers: the settings, the declare arguments, and failing over."""

import asyncio
import logging
from typing import Any

import pytest
from kombu import Queue

from services.common import entrypoints
from services.worker import broker
from shared.bands import QUORUM_DELIVERY_LIMIT, queue_arguments
from shared.config import DEFAULT_CONFIG_PATH, load_settings
from shared.credentials import broker_address
from shared.errors import ConfigError
from shared.logs import NoBrokerPasswords
from shared.rpc import safe_uri

CLUSTER = "amqp://u:p@rabbit-1:5672/farm;amqp://u:p@rabbit-2:5672/farm;amqp://u:p@rabbit-3/farm"


def test_queues_are_classic_unless_the_config_says_quorum() -> None:
    assert load_settings(DEFAULT_CONFIG_PATH, environ={}).queue_type == "classic"
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={"CORRAL_QUEUE_TYPE": "quorum"})
    assert settings.queue_type == "quorum"


def test_an_unknown_queue_type_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="CORRAL.queue_type.*'classic' or 'quorum'"):
        load_settings(DEFAULT_CONFIG_PATH, environ={"CORRAL_QUEUE_TYPE": "mirrored"})


def test_quorum_queues_never_drop_a_message_for_its_redeliveries() -> None:
    assert queue_arguments("classic") == {}
    arguments = queue_arguments("quorum")
    assert arguments["x-queue-type"] == "quorum"
    # Far above RabbitMQ 4's default of 20, and a number (3.10 refuses -1).
    assert arguments["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT >= 10**6
    assert "x-max-priority" not in arguments
    with pytest.raises(ConfigError, match="'lazy'"):
        queue_arguments("lazy")


def test_several_brokers_are_separated_by_semicolons() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH, environ={"CORRAL_AMQP_URI": CLUSTER})
    assert settings.amqp_uris == tuple(CLUSTER.split(";"))
    assert settings.nameko_config()["AMQP_URI"] == CLUSTER  # kombu's failover form as it is
    # Neither the log nor a kept login shows a password, of any node.
    assert "u:p" not in safe_uri(CLUSTER) and "u:p" not in broker_address(CLUSTER)
    assert broker_address(CLUSTER).count(";") == 2


@pytest.mark.parametrize("uri, wrong", [
    ("amqp://u:p@a/v,amqp://u:p@b/v", "separate several brokers with ';'"),
    ("amqp://u:p@a/v;", "an empty one"),
    ("rabbit-1:5672", "'rabbit-1:5672' is not an AMQP URL"),
])
def test_a_broker_address_that_is_no_amqp_url_is_refused_naming_it(uri: str, wrong: str) -> None:
    with pytest.raises(ConfigError, match="CORRAL.amqp_uri") as refused:
        load_settings(DEFAULT_CONFIG_PATH, environ={"CORRAL_AMQP_URI": uri})
    assert wrong in str(refused.value) and "u:p" not in str(refused.value)


def test_a_worker_connects_to_the_first_node_that_answers_and_stays_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    down = {"amqp://u:p@rabbit-1:5672/farm"}
    tried: list[str] = []

    async def connect(uri: str, timeout: float) -> str:  # noqa: ASYNC109 (aio_pika.connect's)
        tried.append(uri)
        if uri in down:
            raise ConnectionRefusedError("Connect call failed")
        return uri

    monkeypatch.setattr(broker.aio_pika, "connect", connect)
    nodes = broker.BrokerNodes(tuple(CLUSTER.split(";")))
    uris = CLUSTER.split(";")
    assert asyncio.run(nodes.connect(timeout=1)) == uris[1]
    assert asyncio.run(nodes.connect(timeout=1)) == uris[1]  # the one that answered, first
    assert tried == [uris[0], uris[1], uris[1]]
    down.update(uris)
    with pytest.raises(ConnectionError) as refused:
        asyncio.run(nodes.connect(timeout=1))
    assert all(safe_uri(uri) in str(refused.value) for uri in uris)
    assert "u:p@" not in str(refused.value)


def test_nameko_queues_are_typed_only_when_shared_and_durable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entrypoints, "configured_queue_type", lambda: "quorum")
    shared: Any = entrypoints.typed(Queue("rpc-scheduler", durable=True))
    assert shared.queue_arguments == queue_arguments("quorum") and shared.durable
    for own in (Queue("evt-x", durable=True, exclusive=True),
                Queue("evt-y", durable=True, auto_delete=True), Queue("reply", durable=False)):
        assert entrypoints.typed(own) is own
    monkeypatch.setattr(entrypoints, "configured_queue_type", lambda: "classic")
    classic = Queue("rpc-scheduler", durable=True)
    assert entrypoints.typed(classic) is classic


def test_the_services_logs_show_no_broker_password_of_any_node() -> None:
    # nameko masks the first URL's password only, in its "Error connecting to broker" line.
    record = logging.LogRecord("nameko.amqp.consume", logging.ERROR, __file__, 1,
                               "Error connecting to broker at %s (%s)",
                               ("amqp://u:********@rabbit-1/farm;" + CLUSTER, "refused"), None)
    assert NoBrokerPasswords().filter(record)
    assert "u:p@" not in record.getMessage() and "rabbit-3/farm" in record.getMessage()

