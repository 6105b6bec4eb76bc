"""Quorum queues for real: a farm on its own RabbitMQ node restarted, and on a three-node cluster
one of whose nodes is stopped and started again while work flows. The ledger shows every task
done exactly once, and no service or worker was restarted.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest

from shared.bands import QUORUM_DELIVERY_LIMIT, REPORTS_QUEUE, queue_arguments, queue_name
from tests.chaos.harness import ChaosRun
from tests.rabbit import RabbitCluster, RabbitNode

pytestmark = pytest.mark.integration


def quorum_run(directory: Path, broker: RabbitNode | RabbitCluster, seed: int) -> ChaosRun:
    run = ChaosRun(directory, broker, seed)
    run.farm.env["CORRAL_QUEUE_TYPE"] = "quorum"
    return run.start()


def queue_types(run: ChaosRun) -> dict[str, tuple[str, str]]:
    """queue -> (its type, its arguments) as the broker lists them."""
    out = run.farm.ctl("list_queues", "-p", run.vhost, "name", "type", "arguments", "--quiet")
    found = {}
    for line in out.splitlines():
        name, _, rest = line.partition("\t")
        kind, _, arguments = rest.partition("\t")
        found[name.strip()] = (kind.strip(), arguments)
    return found


def assert_quorum_queues(run: ChaosRun) -> None:
    queues = queue_types(run)
    for name in (queue_name("cpu", "normal"), REPORTS_QUEUE, "rpc-scheduler", "rpc-registry"):
        kind, arguments = queues[name]
        assert kind == "quorum", (name, queues[name])
        assert str(QUORUM_DELIVERY_LIMIT) in arguments, (name, arguments)
    # A client's own queues stay classic: the services' reply queues, the workers' ones.
    replies = [kind for name, (kind, _) in queues.items() if name.startswith("rpc.reply-")]
    assert replies and set(replies) == {"classic"}, queues


def assert_nothing_restarted(run: ChaosRun) -> None:
    exited = {name: process.returncode for name, process in run.farm.processes.items()
              if process.poll() is not None}
    assert not exited, f"processes that ended: {exited}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RabbitCluster]:
    instance = RabbitCluster(tmp_path / "cluster").start()
    yield instance
    instance.stop()


def _connection(node: RabbitNode) -> amqp.Connection:
    connection = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest")
    connection.connect()
    return connection


def deliveries_until_dropped(node: RabbitNode, arguments: dict[str, Any], crashes: int) -> int:
    """Deliver one message to a consumer that dies holding it, `crashes` times over; how many
    deliveries there were before the queue had it no more."""
    queue = f"crash-loop-{arguments.get('x-delivery-limit')}"
    with _connection(node) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments)
        channel.basic_publish(amqp.Message(b"{}", delivery_mode=2), routing_key=queue)
    for delivered in range(crashes):
        connection = _connection(node)
        message = connection.channel().basic_get(queue, no_ack=False)
        if message is None:
            return delivered
        connection.collect()  # gone without an ack, as a worker killed with its host is
    return crashes


def test_a_crash_looping_consumer_cannot_use_up_a_messages_deliveries(node: RabbitNode) -> None:
    # With a low limit the broker drops the message: what RabbitMQ 4 does at 20 by default.
    low = {"x-queue-type": "quorum", "x-delivery-limit": 3}
    assert deliveries_until_dropped(node, low, crashes=10) == 4
    assert deliveries_until_dropped(node, queue_arguments("quorum"), crashes=25) == 25


def test_a_quorum_farm_loses_nothing_across_a_broker_restart(tmp_path: Path,
                                                              node: RabbitNode) -> None:
    run = quorum_run(tmp_path / "farm", node, seed=13)
    try:
        assert_quorum_queues(run)
        # Work in two bands: each idle worker may be handed a message of each at once (quorum
        # queues take no global prefetch), takes one and puts the other back.
        run.submit(12)
        run.submit(12, priority=5)
        time.sleep(1.0)
        run.inject("broker restart", lambda: node.restart(down_for=1.0))
        verdict = run.verdict()
        assert verdict.passed, verdict.details()
        assert_nothing_restarted(run)
    finally:
        run.stop()


def test_a_cluster_node_stopped_and_started_again_under_a_burst_loses_nothing(
        tmp_path: Path, cluster: RabbitCluster) -> None:
    run = quorum_run(tmp_path / "farm", cluster, seed=4)
    try:
        assert_quorum_queues(run)
        # Every part connected to the first node it was given, and the queues' leaders are
        # there: stopping it moves every connection and every leader at once.
        first = cluster.nodes[0]
        run.submit(40, shortest=0.1, longest=0.6)
        time.sleep(1.5)
        run.inject(f"stop {first.node}", lambda: cluster.stop_node(first))
        # Work submitted while the node is down: the test's own client fails over too.
        run.farm.wait_for(lambda: run.submit(20, shortest=0.1, longest=0.6), 30,
                          "a submit while a node is down")
        time.sleep(4.0)
        run.inject(f"start {first.node}", lambda: cluster.start_node(first))
        verdict = run.verdict()
        assert verdict.passed, verdict.details()
        assert_nothing_restarted(run)
    finally:
        run.stop()
