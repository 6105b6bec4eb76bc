"""RabbitMQ's own permissions for the farm's roles, written from the access rules every RPC method declares.

Tokens decide what a call may do (services.common.access); broker users bound what a connection
can even send. `corral broker-users` prints a shell script of `rabbitmqctl` commands (docker
compose runs it inside its RabbitMQ container, deploy/rabbitmq/users.sh) that makes two users
beside the services' own one:

- the worker user (workers and pools): may publish on `nameko-rpc` only the worker-facing methods'
  routing keys (`scheduler.claim_task`, `registry.worker_heartbeat`...), consume the band queues,
  publish finish reports and heartbeats (`corral.reports`, `corral.heartbeats`) and hear the
  scheduler's and the registry's events;
- the client user (the CLI, pipeline scripts, the monitor): may publish on `nameko-rpc` only the
  people's methods' routing keys, and use its reply queue; no band queue, no default exchange.

The worker user publishes finish reports and heartbeats through the default exchange, which RabbitMQ cannot
restrict by routing key: the worker credential (a token) stays what keeps a worker from calling
people's methods. The script reads VHOST, WORKER_USER, WORKER_PASSWORD, CLIENT_USER and
CLIENT_PASSWORD from its environment.
"""

from __future__ import annotations

import re

from shared.identity import Role

WORKER_USER = "corral-worker"
CLIENT_USER = "corral-client"


def rpc_routing_keys() -> dict[str, list[str]]:
    """`service.method` of every RPC method, by who may call it: "worker" (the worker
    credential only), "people", or "both" (people, and the pool's reads)."""
    from services.common.access import rpc_methods, rule_of
    from services.license import LicenseService
    from services.registry import RegistryService
    from services.resource_negotiator import ResourceNegotiatorService
    from services.scheduler import SchedulerService

    keys: dict[str, list[str]] = {"worker": [], "people": [], "both": []}
    for service in (SchedulerService, RegistryService, ResourceNegotiatorService, LicenseService):
        for name, method in sorted(rpc_methods(service).items()):
            rule = rule_of(method)
            if rule is None:
                continue  # served to nobody (the service refuses to start): no key for anyone
            kind = ("worker" if rule.minimum is Role.WORKER else "both" if rule.workers
                    else "people")
            keys[kind].append(f"{service.name}.{name}")
    return keys


def _alternatives(keys: list[str]) -> str:
    return "^(" + "|".join(re.escape(key) for key in sorted(keys)) + ")$"


def permission_regexes() -> dict[str, dict[str, str]]:
    """user kind -> configure, write, read and the nameko-rpc topic write regex."""
    keys = rpc_routing_keys()
    worker_keys = keys["worker"] + keys["both"]
    people_keys = keys["people"] + keys["both"]
    worker_queues = r"nameko-rpc|scheduler\.events|corral\..*|rpc\.reply-corral_(worker|pool)-.*|amq\.gen-.*"
    heard = r"|registry\.events"  # declared and bound to, never published to
    client_queues = r"nameko-rpc|rpc\.reply-standalone_rpc_proxy-.*"
    return {
        "worker": {"configure": f"^({worker_queues}{heard})$",
                   "write": f"^({worker_queues}|amq\\.default)$",
                   "read": f"^({worker_queues}{heard})$",
                   "topic": _alternatives(worker_keys)},
        "client": {"configure": f"^({client_queues})$", "write": f"^({client_queues})$",
                   "read": f"^({client_queues})$", "topic": _alternatives(people_keys)},
    }


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def setup_script() -> str:
    """The shell script making the worker and client users with their permissions."""
    lines = [
        "#!/bin/sh",
        "# Written by `corral broker-users` from the access rule of every RPC method; do not edit.",
        "# Makes RabbitMQ users for the farm's workers and its people's clients (see README,",
        "# 'Broker users'). Safe to run again: it sets the passwords and permissions anew.",
        "set -eu",
        'VHOST="${VHOST:-/}"',
        f'WORKER_USER="${{WORKER_USER:-{WORKER_USER}}}"',
        f'CLIENT_USER="${{CLIENT_USER:-{CLIENT_USER}}}"',
        'for pair in "$WORKER_USER:${WORKER_PASSWORD:?set WORKER_PASSWORD}" '
        '"$CLIENT_USER:${CLIENT_PASSWORD:?set CLIENT_PASSWORD}"; do',
        '  user="${pair%%:*}"; password="${pair#*:}"',
        '  rabbitmqctl add_user "$user" "$password" >/dev/null 2>&1 || '
        'rabbitmqctl change_password "$user" "$password" >/dev/null',
        "done",
    ]
    for kind, regex in permission_regexes().items():
        user = '"$WORKER_USER"' if kind == "worker" else '"$CLIENT_USER"'
        lines.append(f'rabbitmqctl set_permissions -p "$VHOST" {user} {_quote(regex["configure"])}'
                     f' {_quote(regex["write"])} {_quote(regex["read"])}')
        lines.append(f'rabbitmqctl set_topic_permissions -p "$VHOST" {user} nameko-rpc '
                     f'{_quote(regex["topic"])} {_quote(".*")}')
    return "\n".join(lines) + "\n"
