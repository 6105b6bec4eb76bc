"""Simulated workers for bench.fleet: many light asyncio workers in one process, on the worker's own code.

Each simulated worker is a services.worker.link.FarmLink, so it registers, publishes its
heartbeats (to the queue the registry names) and its finish reports with the real worker's code
(it does not listen for the registry's `worker_controlled` events: nothing is drained here); it
consumes its pool's band queues on a channel of its own (prefetch 1, as a worker does), claims
each task with `scheduler.claim_task` and, instead of starting a process, reports it done at
once (exit 0, as `true` would), or after `--run-seconds`, renewing its lease every heartbeat
meanwhile. Workers share one broker connection (and RPC client and reports channel) per
`--per-connection` of them, so a thousand need some twenty connections, not a thousand.

    python -m bench.fleet_sim --workers 1000 --prefix sim1000 --pool sim

reads the farm's settings like any Corral process (CORRAL_CONFIG and the CORRAL_ variables),
prints `ready` once every worker has registered and consumes, and on SIGTERM has every worker
leave the registry, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from services.worker.control import Obedience
from services.worker.link import FarmLink
from services.worker.rpc import AsyncRpcClient, RpcUnavailable
from shared.bands import REPORTS_QUEUE, queue_name
from shared.config import Settings, load_settings
from shared.credentials import worker_credential
from shared.resources import HostTotals, Resources


@dataclass
class Line:
    """What a group of simulated workers shares: a connection, its RPC client, reports channel."""

    connection: AbstractConnection
    rpc: AsyncRpcClient
    reports: AbstractChannel
    connected: asyncio.Event

    @classmethod
    async def open(cls, settings: Settings) -> Line:
        connection = await aio_pika.connect(settings.amqp_uri, timeout=30)
        rpc = AsyncRpcClient(connection, client_name="corral_sim", token=worker_credential(settings))
        await rpc.start()
        reports = await connection.channel(publisher_confirms=True)
        await reports.declare_queue(REPORTS_QUEUE, durable=True)
        connected = asyncio.Event()
        connected.set()
        return cls(connection, rpc, reports, connected)


@dataclass
class Running:
    """The task a simulated worker holds (what its heartbeat names as current_task)."""

    task_id: int


class SimWorker(FarmLink):
    """One simulated worker on a shared Line."""

    def __init__(self, settings: Settings, line: Line, worker_id: str, host: str, pool: str,
                 bands: list[str], run_seconds: float) -> None:
        self.settings = settings
        self.worker_id, self.name, self.host = worker_id, worker_id, host
        self.pool, self.bands = pool, bands
        self.host_totals = HostTotals(host, Resources(cores=1, memory_mb=1024))
        self.negotiated = False
        self.current: Any = None
        self.control = Obedience(self._stop_consuming, self._start_consuming, self._stop_asked)
        self._connection, self._rpc, self._reports = line.connection, line.rpc, line.reports
        self._connected = line.connected
        self._channel = None
        self._queues: list[AbstractQueue] = []
        self._consumer_tags: list[tuple[AbstractQueue, str]] = []
        self._draining, self._stopped = asyncio.Event(), asyncio.Event()
        self.run_seconds = run_seconds
        self.tasks_run = 0

    def _drop_inbox(self) -> None:
        pass  # messages are handled as they arrive; an unacked one goes back with its channel

    def _stop_asked(self, now: bool) -> None:
        self._draining.set()

    async def start(self) -> None:
        """Join the registry and take work; the heartbeats start at a random point of their
        period, as workers started at different times would send them."""
        delay = 0.2
        while True:
            try:
                await self._register()
                break
            except RpcUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        assert self._connection is not None
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=1, global_=True)
        self._queues = [await self._channel.declare_queue(queue_name(self.pool, band), durable=True)
                        for band in self.bands]
        await self._start_consuming()
        asyncio.get_running_loop().call_later(
            random.uniform(0, self.settings.heartbeat_seconds),
            lambda: asyncio.ensure_future(self._heartbeat_loop()))

    async def _start_consuming(self) -> None:
        if self._consumer_tags or self._channel is None or not self.control.takes_work:
            return
        for queue in self._queues:
            self._consumer_tags.append((queue, await queue.consume(self._on_message)))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        task_id, attempt = int(body["task_id"]), int(body["attempt"])
        try:
            claim = await self._call("scheduler", "claim_task", attempts=3, task_id=task_id,
                                     attempt=attempt, worker_id=self.worker_id, host=self.host)
        except RpcUnavailable:
            await message.reject(requeue=True)
            return
        if not claim or claim.get("status") != "claimed":
            await message.ack()  # a duplicate or stale delivery
            return
        self.current = Running(task_id)
        started = time.time()
        ends = time.monotonic() + self.run_seconds
        while (left := ends - time.monotonic()) > 0:
            await asyncio.sleep(min(left, self.settings.heartbeat_seconds))
            if time.monotonic() < ends:
                await self._rpc_call("scheduler", "renew_lease", task_id=task_id,
                                     lease_token=claim["lease_token"], progress=None)
        await self._publish_finish({
            "task_id": task_id, "lease_token": claim["lease_token"], "exit_code": 0,
            "result": None, "reason": None, "log_tail": None, "log_path": None,
            "process_started_at": started, "process_ended_at": time.time(),
            "peak_memory_mb": None})
        self.current = None
        self.tasks_run += 1
        await message.ack()

    async def stop(self) -> None:
        self._draining.set()  # its heartbeat loop ends at its next beat
        await self._stop_consuming()
        await self._leave()


async def simulate(settings: Settings, workers: int, prefix: str, pool: str, bands: list[str],
                   run_seconds: float, per_connection: int) -> None:
    lines = [await Line.open(settings) for _ in range(-(-workers // per_connection))]
    fleet = [SimWorker(settings, lines[n // per_connection], f"{prefix}-{n:04d}",
                       f"{prefix}-host-{n // 8:03d}", pool, bands, run_seconds)
             for n in range(workers)]
    for start in range(0, workers, 50):  # in groups, as a farm's machines come up
        await asyncio.gather(*(worker.start() for worker in fleet[start:start + 50]))
    print("ready", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    await stopping.wait()
    await asyncio.gather(*(worker.stop() for worker in fleet))
    print(json.dumps({"tasks_run": sum(worker.tasks_run for worker in fleet)}), flush=True)
    for line in lines:
        await line.connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--prefix", required=True, help="worker ids are PREFIX-0000, ...")
    parser.add_argument("--pool", default="sim")
    parser.add_argument("--bands", default="normal", help="comma-separated")
    parser.add_argument("--run-seconds", type=float, default=0.0,
                        help="how long each task holds its worker (renewing its lease)")
    parser.add_argument("--per-connection", type=int, default=50)
    args = parser.parse_args(argv)
    asyncio.run(simulate(load_settings(), args.workers, args.prefix, args.pool,
                         args.bands.split(","), args.run_seconds, args.per_connection))
    sys.exit(0)


if __name__ == "__main__":
    main()
