"""Two scheduler instances on one farm, through the broker: each has its own queue for every event
that feeds its views, and a scheduler started on a broker an earlier Corral used deletes the
event queues that one instance alone once read."""

import pytest
from kombu import Connection, Queue

from tests.farm import Farm

pytestmark = pytest.mark.integration

OLD = "evt-registry-worker_joined--scheduler.handle_worker_joined"


def queues(farm: Farm) -> list[str]:
    return farm.ctl("list_queues", "-p", farm.vhost, "name", "--quiet").split()


def test_every_instance_has_its_own_queue_for_view_events_and_the_pooled_ones_are_gone(
        farm: Farm) -> None:
    with Connection(farm.amqp_uri) as connection:
        Queue(OLD, durable=True, channel=connection.default_channel).declare()
    farm.start_service("registry")
    farm.start_service("scheduler")
    farm.start_service("scheduler", name="scheduler-2")
    present = queues(farm)
    assert OLD not in present
    joined = [name for name in present if name.startswith(OLD + "-")]
    assert len(joined) == 2, present  # one per instance: each hears every worker join
