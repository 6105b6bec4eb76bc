"""The farm overview's queue depths come over one kept connection and channel: a missing queue
reads as empty without spoiling the reads after it, and a lost connection is opened again."""

from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Producer, Queue

from services.registry.queue_probe import QueueProbe


@pytest.fixture
def probe(amqp_uri: str) -> Iterator[QueueProbe]:
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        Queue("corral.cpu.normal", channel=channel, durable=True).declare()
        producer = Producer(channel, exchange=Exchange(""))
        for _ in range(3):
            producer.publish(b"{}", routing_key="corral.cpu.normal")
    probe = QueueProbe(amqp_uri)
    yield probe
    probe.close()


def test_a_missing_queue_reads_empty_and_the_next_read_still_answers(probe: QueueProbe) -> None:
    assert probe.depths(["corral.cpu.normal", "corral.cpu.high", "corral.cpu.normal"]) == {
        "corral.cpu.normal": (3, 0), "corral.cpu.high": (0, 0)}
    assert probe.depths(["corral.cpu.normal"]) == {"corral.cpu.normal": (3, 0)}


def test_the_connection_is_kept_between_calls_and_opened_again_when_lost(
        probe: QueueProbe) -> None:
    probe.depths(["corral.cpu.normal"])
    kept = probe._connection
    probe.depths(["corral.cpu.normal"])
    assert probe._connection is kept
    assert kept is not None
    kept.release()  # gone underneath the probe, as after a broker restart
    assert probe.depths(["corral.cpu.normal"]) == {"corral.cpu.normal": (3, 0)}
