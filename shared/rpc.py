"""Calling the farm's services from outside them (the CLI, pipeline scripts, the REST API):
requests that expire unanswered, and a quick check that a service is running at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.errors import BrokerUnreachable, ServiceUnavailable

# How each service is started on its own; `corral up` starts all of them.
SERVICE_MODULES = {"scheduler": "services.scheduler", "registry": "services.registry",
                   "resource_negotiator": "services.resource_negotiator",
                   "license": "services.license"}


def how_to_start(service: str) -> str:
    module = SERVICE_MODULES.get(service, f"services.{service}")
    return (f"start the farm with `corral up`, or this service alone with "
            f"`nameko run --config deploy/config.yaml {module}`")


def safe_uri(amqp_uri: str) -> str:
    """The broker address without its user and password (each node's, on a cluster)."""
    return ";".join(part.split("@")[-1] for part in amqp_uri.split(";"))


def broker_advice(amqp_uri: str, error: Exception) -> str:
    """What to do about a broker that refused or did not answer, for the error it gave."""
    import amqp.exceptions

    where = safe_uri(amqp_uri)
    if isinstance(error, amqp.exceptions.AccessRefused):
        return (f"RabbitMQ at {where} refused the login ({error}).\n"
                "Check the user and password in CORRAL_AMQP_URI (or amqp_uri in the config): "
                "amqp://USER:PASSWORD@HOST:5672/VHOST.")
    if isinstance(error, amqp.exceptions.NotAllowed):
        return (f"RabbitMQ at {where} does not let this user use that virtual host ({error}).\n"
                "Create it or grant access: `rabbitmqctl add_vhost VHOST` and "
                "`rabbitmqctl set_permissions -p VHOST USER '.*' '.*' '.*'`.")
    return (f"RabbitMQ is not reachable at {where} ({error}).\n"
            "Start it with `rabbitmq-server -detached` (or `sudo systemctl start rabbitmq-server`),"
            " or point CORRAL_AMQP_URI at a running broker.")


def check_broker(amqp_uri: str) -> None:
    """Raise BrokerUnreachable with advice fitting the failure when RabbitMQ does not let us in."""
    from kombu.connection import Connection

    try:
        with Connection(amqp_uri, connect_timeout=3) as connection:  # type: ignore[no-untyped-call]
            # A try for each node of a cluster (kombu moves on to the next at each retry).
            connection.ensure_connection(max_retries=amqp_uri.count(";") + 1)
    except Exception as exc:
        raise BrokerUnreachable(broker_advice(amqp_uri, exc)) from None


def check_service(amqp_uri: str, service: str) -> None:
    """Raise ServiceUnavailable, saying how to start it, when nothing consumes `service`'s
    requests: a call would otherwise wait its whole timeout for nobody."""
    import amqp.exceptions
    from kombu.connection import Connection

    with Connection(amqp_uri, connect_timeout=3) as connection:  # type: ignore[no-untyped-call]
        try:
            _, _, consumers = connection.default_channel.queue_declare(
                queue=f"rpc-{service}", passive=True)
        except amqp.exceptions.NotFound:
            consumers = 0
    if not consumers:
        raise ServiceUnavailable(f"the {service} service is not running (nothing takes its "
                                 f"requests at {safe_uri(amqp_uri)}): {how_to_start(service)}")


class CheckedServices:
    """A ClusterRpcProxy whose services are checked to be running before their first call."""

    def __init__(self, client: Any, amqp_uri: str) -> None:
        self._client = client
        self._amqp_uri = amqp_uri
        self._checked: set[str] = set()
        self.last_service: str | None = None

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        if service not in self._checked:
            check_service(self._amqp_uri, service)
            self._checked.add(service)
        self.last_service = service
        return getattr(self._client, service)


def cluster_rpc_proxy(amqp_uri: str, **options: Any) -> Any:
    """Nameko's standalone ClusterRpcProxy (not started) whose reply queue is transient.

    Nameko declares it durable: on a cluster, a durable classic queue whose node went down can be
    declared nowhere until that node is back, so the client could not fail over to another node.
    A transient one RabbitMQ drops with its node, and the client declares it afresh elsewhere.
    """
    from nameko.standalone.rpc import ClusterRpcProxy

    client = ClusterRpcProxy(uri=amqp_uri, **options)
    client.reply_listener.queue.durable = False
    return client


@contextmanager
def farm_rpc(amqp_uri: str, timeout: float,
             context_data: dict[str, str] | None = None) -> Iterator[CheckedServices]:
    """An RPC client whose requests expire after `timeout` seconds unanswered, carrying
    `context_data` (the caller's token and origin) on every call.

    A request nobody took within its timeout is dropped by the broker rather than carried out
    later, when the caller has already given up (and perhaps tried again). A call past the
    timeout raises ServiceUnavailable naming the service; one to a service that is not running
    raises it at once.
    """
    from nameko.exceptions import RpcTimeout, UnknownService

    check_broker(amqp_uri)
    services: CheckedServices | None = None
    try:
        with cluster_rpc_proxy(amqp_uri, timeout=timeout, expiration=timeout,
                               context_data=context_data) as client:
            services = CheckedServices(client, amqp_uri)
            yield services
    except RpcTimeout:
        service = (services.last_service if services else None) or "service"
        raise ServiceUnavailable(
            f"the {service} service did not answer within {timeout:g} s; it may be overloaded "
            f"or stopping (see its log), or {how_to_start(service)}") from None
    except UnknownService as exc:
        raise ServiceUnavailable(f"the {exc} service is not running: {how_to_start(str(exc))}") \
            from None
