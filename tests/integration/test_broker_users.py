"""RabbitMQ's own permissions for the farm's roles (deploy/rabbitmq/users.sh) on the real broker."""

import os
import subprocess
import uuid
from collections.abc import Iterator

import amqp.exceptions
import pytest
from kombu import Connection, Exchange, Queue

from tests.farm import AMQP_HOST, ROOT, rabbitmqctl

SCRIPT = ROOT / "deploy" / "rabbitmq" / "users.sh"


@pytest.fixture
def broker_users(vhost: str) -> Iterator[dict[str, str]]:
    """The script's two users, made on this test's vhost under names of their own."""
    suffix = uuid.uuid4().hex[:8]
    users = {"worker": f"corral-test-worker-{suffix}", "client": f"corral-test-client-{suffix}"}
    password = uuid.uuid4().hex
    env = {**os.environ, "VHOST": vhost, "WORKER_USER": users["worker"],
           "CLIENT_USER": users["client"], "WORKER_PASSWORD": password,
           "CLIENT_PASSWORD": password}
    try:
        done = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        with Connection(f"amqp://guest:guest@{AMQP_HOST}/{vhost}") as admin:
            channel = admin.channel()
            Exchange("nameko-rpc", "topic", durable=True)(channel).declare()
            Queue("corral.cpu.normal", durable=True)(channel).declare()
        yield {kind: f"amqp://{name}:{password}@{AMQP_HOST}/{vhost}" for kind, name in users.items()}
    finally:
        for name in users.values():
            try:
                rabbitmqctl("delete_user", name)
            except RuntimeError:
                pass


def publish(uri: str, routing_key: str) -> None:
    """Publish a request on nameko-rpc, confirmed, so a refusal raises here."""
    with Connection(uri, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer(exchange=Exchange("nameko-rpc", "topic", durable=True))
        producer.publish({"args": [], "kwargs": {}}, routing_key=routing_key)


def test_a_client_may_call_peoples_methods_but_not_claim_a_task(broker_users) -> None:
    publish(broker_users["client"], "scheduler.list_jobs")
    with pytest.raises(amqp.exceptions.AccessRefused):
        publish(broker_users["client"], "scheduler.claim_task")


def test_a_worker_may_claim_but_not_submit_or_cancel(broker_users) -> None:
    publish(broker_users["worker"], "scheduler.claim_task")
    for key in ("scheduler.submit_job", "scheduler.cancel_job", "license.set_pool"):
        with pytest.raises(amqp.exceptions.AccessRefused):
            publish(broker_users["worker"], key)


def test_a_client_cannot_take_messages_from_a_band_queue(broker_users) -> None:
    with Connection(broker_users["client"]) as connection:
        with pytest.raises(amqp.exceptions.AccessRefused):
            Queue("corral.cpu.normal", durable=True)(connection.channel()).get()
