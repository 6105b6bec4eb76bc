"""`corral health NAME`: asks one Corral service something cheap over RPC within a short timeout, for
container healthchecks and Kubernetes probes; exits 0 when it answered, 1 saying why when not."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from services.cli.app import ConfigOption, HostOption, _settings, app, console, err_console, rpc_client
from shared.errors import BrokerUnreachable, CorralError, ServiceUnavailable

# The cheap read each service answers from its own database, so an answer also says the database
# is there. A service not listed (a new one) is asked for PROBE_METHOD, which no service has:
# nameko's "no such method" reply still proves the service is consuming its RPC queue.
PROBES: dict[str, Callable[[Any], Any]] = {
    "scheduler": lambda rpc: rpc.scheduler.list_jobs(page_size=1),
    "registry": lambda rpc: rpc.registry.list_services(),
    "resource_negotiator": lambda rpc: rpc.resource_negotiator.list_hosts(),
    "license": lambda rpc: rpc.license.list_pools(),
}
PROBE_METHOD = "corral_health_probe"
POOL = "pool"
DEFAULT_TIMEOUT_SECONDS = 10.0


class Unhealthy(Exception):
    """The service did not answer, or answered with an error that is not a refusal."""


def ask(name: str, rpc: Any) -> str:
    """Ask service `name` over `rpc` (a ClusterRpcProxy); what it answered, or Unhealthy."""
    from nameko.exceptions import MethodNotFound, RpcTimeout, UnknownService

    probe = PROBES.get(name, lambda proxy: getattr(getattr(proxy, name), PROBE_METHOD)())
    started = time.monotonic()
    try:
        probe(rpc)
    except (RpcTimeout, TimeoutError):
        raise Unhealthy(f"{name}: no answer over RPC in time (is the service running and "
                        "connected to this broker?)") from None
    except UnknownService:
        raise Unhealthy(f"{name}: no such service on this broker (it has never started here, "
                        "or its RPC queue is gone)") from None
    except MethodNotFound:
        return f"{name}: answered in {_ms(started)}"
    except (ServiceUnavailable, BrokerUnreachable) as exc:
        # The client's own verdict that nobody answered (farm_rpc raises these itself): not up.
        raise Unhealthy(f"{name}: {exc}") from None
    except CorralError as exc:
        # A refusal (a missing credential, say) is the service itself answering: it is up.
        return f"{name}: answered ({type(exc).__name__}) in {_ms(started)}"
    except Exception as exc:
        raise Unhealthy(f"{name}: answered with an error: {exc}") from None
    return f"{name}: answered in {_ms(started)}"


def scheduler_leadership(rpc: Any) -> str | None:
    """Which scheduler instance answered, whether it leads, and which one does; None when its
    health answer does not say (an older scheduler, or no answer)."""
    try:
        lead = rpc.scheduler.health().get("leadership")
    except Exception:
        return None
    if not lead:
        return None
    said = f"instance {lead['instance']} is the {lead['role']}"
    if lead["role"] == "leader":
        return f"{said} (term {lead['term']})"
    return f"{said}; {lead['leader']} leads" if lead["leader"] else f"{said}; no instance leads now"


def ask_pool(rpc: Any, host: str) -> str:
    """A pool is healthy while the registry knows a live worker on its host."""
    try:
        workers = rpc.registry.list_workers(alive=True)
    except Exception as exc:
        raise Unhealthy(f"pool: the registry did not answer: {exc}") from None
    mine = [worker for worker in workers if worker.get("host") == host]
    if not mine:
        raise Unhealthy(f"pool: the registry knows no live worker on host {host!r} (are its "
                        "workers failing to start? see the pool's log)")
    return f"pool: {len(mine)} live worker(s) on {host}"


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


@app.command("health")
def health(
    name: str = typer.Argument(..., metavar="SERVICE",
                               help="scheduler, registry, resource_negotiator, license, cleanup, "
                                    "or pool (this host's workers, asked of the registry; "
                                    "--host names the host)."),
    config: Path | None = ConfigOption,
    timeout: float = typer.Option(DEFAULT_TIMEOUT_SECONDS, min=0.1,
                                  help="Seconds to wait for the answer."),
    host: str | None = HostOption,
) -> None:
    """Ask a service something cheap over RPC: exit 0 when it answers, 1 saying why when not
    (container healthchecks and Kubernetes probes run this)."""
    settings = _settings(config)
    try:
        with rpc_client(settings, timeout=timeout) as rpc:
            if name == POOL:
                said = ask_pool(rpc, host or socket.gethostname())
            else:
                said = ask(name, rpc)
                lead = scheduler_leadership(rpc) if name == "scheduler" else None
                said = f"{said}; {lead}" if lead else said
    except Unhealthy as exc:
        err_console.print(f"[red]unhealthy[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(said)
