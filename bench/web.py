"""Monitor benchmark: page and API latency on a big farm, and the RPC clients a gunicorn worker could use.

Starts a real farm (registry, scheduler, resource negotiator, license service, no workers) on a
fresh RabbitMQ vhost with SQLite in a temporary folder, registers 1,000 workers (in a pool no job
uses, so nothing is released to them), submits 100,000 tasks (100 jobs of 1,000), starts the
monitor under gunicorn and prints one JSON object:

- rpc_clients: one `registry.list_services` round trip, p50/p95, from nameko's standalone
  ClusterRpcProxy and from the monitor's own synchronous client (web.rpc.RpcClient).
- pages: p95 of the overview, the jobs list and a 1,000-task job page (and its live fragment),
  over HTTP from gunicorn, sequentially.
- submit: a one-task job through `POST /api/v1/jobs` against `scheduler.submit_job` over RPC.

Run it with `.venv/bin/python -m bench.web` (`--workers 100 --jobs 10` for a quick look).
Targets: every page p95 < 100 ms; the API's submit at most 5 ms over the RPC submit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench.dispatch import percentile
from shared.identity import Role, issue_token
from tests.farm import AMQP_HOST, Farm, create_vhost, delete_vhost
from web.rpc import RpcClient


def timed(call: Callable[[], Any], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(samples, 0.5), 2),
            "p95_ms": round(percentile(samples, 0.95), 2), "max_ms": round(max(samples), 2)}


def rpc_clients(farm: Farm, token: str, repeat: int) -> dict[str, Any]:
    from nameko.standalone.rpc import ClusterRpcProxy

    own = RpcClient(farm.amqp_uri, timeout=10)
    own.call("registry", "list_services", token=token)
    figures = {"web.rpc.RpcClient": timed(
        lambda: own.call("registry", "list_services", token=token), repeat)}
    own.close()
    with ClusterRpcProxy(uri=farm.amqp_uri, timeout=10,
                         context_data={"auth_token": token}) as nameko_client:
        nameko_client.registry.list_services()
        figures["nameko ClusterRpcProxy"] = timed(nameko_client.registry.list_services, repeat)
    return figures


def fill(farm: Farm, token: str, workers: int, jobs: int, tasks_per_job: int) -> int:
    rpc = RpcClient(farm.amqp_uri, timeout=120)
    for n in range(workers):
        rpc.call("registry", "register_worker", token=farm.credentials.worker_token,
                 worker_id=f"bench-{n:04d}", host=f"render-{n // 8:03d}", pool="idle-pool",
                 bands=["low", "normal", "high"], pid=None)
    big = 0
    for n in range(jobs):
        job = rpc.call("scheduler", "submit_job", token=token, spec={
            "name": f"shot{n:03d}", "user": f"artist{n % 10}",
            "layers": [{"name": "render", "frames": f"1-{tasks_per_job}", "chunk": 1,
                        "command": ["true", "{frame}"]}]})
        big = job["id"]
    rpc.close()
    return int(big)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--tasks-per-job", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--rpc-only", action="store_true",
                        help="only the RPC clients, against a registry alone")
    args = parser.parse_args(argv)
    if args.rpc_only:
        vhost = create_vhost()
        with tempfile.TemporaryDirectory() as directory:
            farm = Farm(Path(directory), f"amqp://guest:guest@{AMQP_HOST}/{vhost}", vhost)
            try:
                farm.start_service("registry")
                token = issue_token(farm.credentials.secret, "bench", Role.VIEWER)
                figures = {"rpc_clients": rpc_clients(farm, token, args.repeat)}
            finally:
                farm.stop()
                delete_vhost(vhost)
        json.dump(figures, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    vhost = create_vhost()
    with tempfile.TemporaryDirectory() as directory:
        farm = Farm(Path(directory), f"amqp://guest:guest@{AMQP_HOST}/{vhost}", vhost)
        farm.env.update({"CORRAL_WORKER_LOST_AFTER": "100000", "CORRAL_HEARTBEAT_SECONDS": "3",
                         "CORRAL_LEASE_SECONDS": "20",
                         "CORRAL_MAX_QUEUED_PER_USER": str(args.jobs * args.tasks_per_job)})
        try:
            for service in ("registry", "scheduler", "resource_negotiator", "license"):
                farm.start_service(service)
            token = issue_token(farm.credentials.secret, "bench", Role.WRANGLER)
            started = time.perf_counter()
            big = fill(farm, token, args.workers, args.jobs, args.tasks_per_job)
            filled_s = time.perf_counter() - started
            url = farm.start_monitor()
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"

            def get(path: str) -> Callable[[], None]:
                def fetch() -> None:
                    reply = session.get(url + path, timeout=30)
                    reply.raise_for_status()
                return fetch

            pages = {path: timed(get(path), args.repeat) for path in (
                "/", "/fragments/overview", "/jobs", "/fragments/jobs", f"/jobs/{big}",
                f"/fragments/jobs/{big}", "/api/v1/jobs", f"/api/v1/jobs/{big}")}
            spec = {"name": "one", "user": "bench", "tasks": [{"command": ["true"]}]}
            rpc = RpcClient(farm.amqp_uri, timeout=30)
            submit = {
                "rpc scheduler.submit_job": timed(
                    lambda: rpc.call("scheduler", "submit_job", token=token, spec=spec),
                    args.repeat),
                "POST /api/v1/jobs": timed(
                    lambda: session.post(url + "/api/v1/jobs", json=spec, timeout=30)
                    .raise_for_status(), args.repeat)}
            submit["api_over_rpc_p50_ms"] = round(submit["POST /api/v1/jobs"]["p50_ms"]
                                                  - submit["rpc scheduler.submit_job"]["p50_ms"], 2)
            rpc.close()
            figures = {"farm": {"workers": args.workers,
                                "tasks": args.jobs * args.tasks_per_job,
                                "filled_in_s": round(filled_s, 1)},
                       "rpc_clients": rpc_clients(farm, token, args.repeat),
                       "pages": pages, "submit": submit}
        finally:
            farm.stop()
            delete_vhost(vhost)
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
