"""A worker's line to the farm: the broker connection and its reconnects, joining the registry,
heartbeats, what the registry wants of the worker, finish reports, and RPC calls with retries.

Heartbeats are published without a reply to the queue the registry named when the worker
registered (shared.heartbeat); what is wanted of the worker comes by the registry's
`worker_controlled` event, told again by the registry while a heartbeat says the worker obeys
something else. A registry that names no queue (an older one) is sent the `worker_heartbeat`
RPC, whose reply says what is wanted and whether the registry knows the worker.

`FarmLink` is the part of services.worker.main.Worker that talks to the broker; the worker's
own work (consuming, claiming, running) stays there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from services.worker import outbox
from services.worker.broker import BrokerNodes
from services.worker.control import Obedience
from services.worker.rpc import AsyncRpcClient, RpcUnavailable, ServiceUnknown
from shared import events
from shared.bands import REPORTS_QUEUE, queue_arguments, queue_name
from shared.config import Settings
from shared.credentials import worker_credential
from shared.errors import StaleLease
from shared.heartbeat import Heartbeat
from shared.identity import CONTEXT_KEY
from shared.resources import HostTotals, replaced_totals_note

if TYPE_CHECKING:
    from services.worker.process import TaskRun

log = logging.getLogger("corral.worker")


class FarmLink:
    """The broker side of a worker (a base of services.worker.main.Worker)."""

    settings: Settings
    worker_id: str
    name: str | None
    host: str
    pool: str
    bands: list[str]
    host_totals: HostTotals
    negotiated: bool
    current: TaskRun | None
    control: Obedience
    _connection: AbstractConnection | None
    _channel: AbstractChannel | None
    _reports: AbstractChannel | None
    _queues: list[AbstractQueue]
    _consumer_tags: list[tuple[AbstractQueue, str]]
    _attempts_dir: Path
    _rpc: AsyncRpcClient | None
    _connected: asyncio.Event
    _draining: asyncio.Event
    _stopped: asyncio.Event
    _heartbeats_to: str | None = None  # the registry's heartbeat queue; None: by RPC

    async def _start_consuming(self) -> None:
        raise NotImplementedError

    def _drop_inbox(self) -> None:
        raise NotImplementedError

    async def _stop_consuming(self) -> None:
        """Cancel every band consumer; on a dead channel they are gone already."""
        tags, self._consumer_tags = self._consumer_tags, []
        for queue, tag in tags:
            try:
                await queue.cancel(tag)
            except Exception:  # the channel is already gone: so are its consumers
                pass

    async def _stay_connected(self) -> None:
        """Connect, set up, and reconnect with backoff whenever the broker goes away."""
        delay = 0.2
        brokers = BrokerNodes(self.settings.amqp_uris)
        while not self._stopped.is_set():
            try:
                connection = await brokers.connect(timeout=10)
            except Exception as exc:
                log.warning("cannot reach the broker (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, reconnect_delay_max(self.settings))
                continue
            closed = asyncio.Event()
            connection.close_callbacks.add(lambda *_, closed=closed: closed.set())
            try:
                await self._set_up(connection, closed)
                delay = 0.2
                log.info("connected as %s (pool %s, bands %s)", self.worker_id, self.pool,
                         ",".join(self.bands))
                await closed.wait()
                log.warning("lost the broker connection; reconnecting")
            except Exception as exc:
                log.warning("setting up on the broker failed: %s", exc)
                await asyncio.sleep(delay)
            finally:
                self._connected.clear()
                self._consumer_tags.clear()
                self._drop_inbox()
                if not connection.is_closed:
                    await connection.close()

    async def _set_up(self, connection: AbstractConnection, closed: asyncio.Event) -> None:
        self._connection = connection
        self._rpc = AsyncRpcClient(connection, token=worker_credential(self.settings))
        await self._rpc.start()
        self._reports = await connection.channel(publisher_confirms=True)
        arguments = queue_arguments(self.settings.queue_type)
        await self._reports.declare_queue(REPORTS_QUEUE, durable=True, arguments=arguments)
        self._channel = await connection.channel(publisher_confirms=False)
        # One message at a time across every band queue: RabbitMQ applies a global prefetch to
        # classic queues only. Each quorum queue's consumer may then hold one: the worker takes
        # the first and puts the others back (services.worker.main).
        await self._channel.set_qos(prefetch_count=1,
                                    global_=self.settings.queue_type == "classic")
        self._queues = [await self._channel.declare_queue(queue_name(self.pool, band),
                                                          durable=True, arguments=arguments)
                        for band in self.bands]
        await self._listen_for_cancels(connection)
        # Renewals and finish reports need the scheduler alone: they flow from here on, however
        # long the registry takes to come back after the same outage.
        self._connected.set()
        await self._join(connection, closed)
        await self._report_host()
        # A payload end a dead or stopped worker of this host left unreported is taken by the
        # scheduler before we take work: its task must not come to us to run again.
        await self._deliver_outcomes(attempts=3)
        if self.current is None and not self._draining.is_set():
            await self._start_consuming()

    async def _join(self, connection: AbstractConnection, closed: asyncio.Event) -> None:
        """Register with the registry, trying again until it answers or the connection goes."""
        delay = 0.2
        while True:
            try:
                await self._register()
                return
            except RpcUnavailable as exc:
                # The broker going away again shows first in the close callback or a closed
                # RPC channel: then connect afresh rather than ask on a dead line for ever.
                assert self._rpc is not None
                if closed.is_set() or connection.is_closed or self._rpc.closed:
                    raise ConnectionError("connection to the broker closed") from None
                log.warning("the registry does not answer yet (%s); renewals and reports go on",
                            exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _listen_for_cancels(self, connection: AbstractConnection) -> None:
        """Hear the scheduler's cancels and the registry's wanted states, as they are sent."""
        channel = await connection.channel()
        for service, event, handler in (
                ("scheduler", events.TASK_CANCELLED, self._on_cancel_event),
                ("registry", events.WORKER_CONTROLLED, self._on_controlled_event)):
            exchange = await channel.declare_exchange(f"{service}.events",
                                                      aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, routing_key=event)
            await queue.consume(handler, no_ack=True)

    async def _on_controlled_event(self, message: AbstractIncomingMessage) -> None:
        await self.control.hear_event(json.loads(message.body), self.worker_id)

    async def _on_cancel_event(self, message: AbstractIncomingMessage) -> None:
        payload = json.loads(message.body)
        current = self.current
        if current is not None and payload.get("task_id") == current.task_id \
                and payload.get("worker_id") in (None, self.worker_id):
            log.info("task %s cancelled: killing it", current.task_id)
            current.kill("cancelled")

    async def _register(self) -> None:
        assert self._rpc is not None
        reply = await self._rpc.call(
            "registry", "register_worker", timeout=self.settings.rpc_timeout_seconds,
            worker_id=self.worker_id, host=self.host, pool=self.pool, bands=self.bands,
            pid=os.getpid(), name=self.name)
        self._heartbeats_to = reply.get("heartbeats") if isinstance(reply, dict) else None
        await self.control.hear(reply)

    async def _report_host(self) -> None:
        """Tell the negotiator this host's totals (every worker on a host reports the same)."""
        totals = self.host_totals
        assert self._rpc is not None
        try:
            reply = await self._rpc.call(
                "resource_negotiator", "report_host", timeout=self.settings.rpc_timeout_seconds,
                host=self.host, cores=totals.resources.cores,
                memory_mb=totals.resources.memory_mb,
                gpus=[{"index": g.index, "model": g.model, "memory_mb": g.memory_mb}
                      for g in totals.gpus],
                custom=dict(totals.resources.custom))
            self.negotiated = True
            note = replaced_totals_note(self.host, reply)
            if note:
                log.warning("%s", note)
        except ServiceUnknown:
            log.warning("no resource negotiator on this farm: task resources are not reserved")
            self.negotiated = False
        except RpcUnavailable as exc:
            log.warning("could not report host totals to the negotiator: %s", exc)

    async def _leave(self) -> None:
        try:
            # One try: a registry that is gone will mark us lost anyway, and a stopping farm
            # should not wait on it.
            await self._call("registry", "leave_worker", attempts=1, worker_id=self.worker_id)
        except RpcUnavailable:
            log.warning("could not tell the registry we are leaving; it will notice")

    async def _publish_finish(self, report: dict[str, Any]) -> None:
        """Hand the finish report to the broker (confirmed, persistent); no reply is awaited.

        Applying a report twice is harmless, so after a lost connection it is simply sent again.
        """
        body = json.dumps(report).encode()
        delay = 0.1
        while True:
            try:
                await asyncio.wait_for(self._connected.wait(), self.settings.rpc_timeout_seconds)
                if self._reports is None or self._reports.is_closed:
                    raise ConnectionError("the reports channel is closed")
                await self._reports.default_exchange.publish(
                    aio_pika.Message(body, content_type="application/json",
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=REPORTS_QUEUE, timeout=self.settings.rpc_timeout_seconds)
                return
            except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
                log.warning("finish report of task %s not sent yet (%s); retrying",
                            report["task_id"], exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _outbox_loop(self) -> None:
        """Report the payload ends that a killed, stopped or hung worker of this host has not."""
        while True:
            await asyncio.sleep(outbox.LOOK_EVERY)
            await self._deliver_outcomes(attempts=None)

    async def _deliver_outcomes(self, attempts: int | None) -> None:
        async def send(report: dict[str, Any]) -> None:
            try:
                await self._call("scheduler", "finish_task", attempts=attempts, **report)
            except StaleLease as exc:
                log.warning("late finish report refused: %s", exc)

        try:
            await outbox.deliver(self._attempts_dir, os.getpid(), send)
        except (OSError, RpcUnavailable) as exc:
            log.warning("unreported payload ends not sent yet: %s", exc)

    # --- heartbeats and calls -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            if self._draining.is_set():
                return  # we have left the registry; a heartbeat would bring us back
            try:
                if not await self._publish_heartbeat():
                    await self._rpc_heartbeat()
            except RpcUnavailable as exc:
                log.warning("heartbeat to the registry failed: %s", exc)

    async def _publish_heartbeat(self) -> bool:
        """Publish a heartbeat to the registry's queue (confirmed, no reply awaited); False when
        the registry takes none that way or it could not be handed to the broker."""
        queue, channel = self._heartbeats_to, self._reports
        if queue is None or channel is None or channel.is_closed or self._rpc is None \
                or not self._connected.is_set():
            return False
        beat = Heartbeat(worker_id=self.worker_id,
                         state=self.control.state(busy=self.current is not None),
                         current_task=self.current.task_id if self.current else None,
                         wanted=self.control.wanted, host=self.host, pool=self.pool,
                         bands=list(self.bands), pid=os.getpid(), name=self.name,
                         sent_at=time.time())
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(beat.model_dump_json().encode(), content_type="application/json",
                                 headers={f"nameko.{CONTEXT_KEY}": self._rpc.token}),
                routing_key=queue, timeout=self.settings.rpc_timeout_seconds)
            return True
        except (TimeoutError, aio_pika.exceptions.AMQPError, ConnectionError) as exc:
            # A queue gone (returned unroutable) or a channel closing: this one goes by RPC.
            log.warning("heartbeat not published (%s); sending it by RPC", exc)
            return False

    async def _rpc_heartbeat(self) -> None:
        """A heartbeat by the `worker_heartbeat` RPC, acting on its reply."""
        reply = await self._rpc_call(
            "registry", "worker_heartbeat", worker_id=self.worker_id,
            state=self.control.state(busy=self.current is not None),
            current_task=self.current.task_id if self.current else None)
        if not reply.get("known"):
            await self._register()
        else:
            await self.control.hear(reply)

    async def _rpc_call(self, service: str, method: str, **kwargs: Any) -> Any:
        if self._rpc is None or not self._connected.is_set():
            raise RpcUnavailable("not connected")
        return await self._rpc.call(service, method, timeout=self.settings.rpc_timeout_seconds,
                                    **kwargs)

    async def _call(self, service: str, method: str, attempts: int | None,
                    optional_service: bool = False, **kwargs: Any) -> Any:
        """Call until answered (`attempts` None: for ever), waiting for the connection between.

        With `optional_service`, a service that has never run on this broker raises
        ServiceUnknown at once; otherwise it is waited for like one that is restarting.
        """
        delay, tried = 0.1, 0
        while True:
            tried += 1
            try:
                await asyncio.wait_for(self._connected.wait(), self.settings.rpc_timeout_seconds)
                return await self._rpc_call(service, method, **kwargs)
            except ServiceUnknown:
                if optional_service:
                    raise
                log.warning("%s is not running yet; waiting for it", service)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except (TimeoutError, RpcUnavailable) as exc:
                if attempts is not None and tried >= attempts:
                    raise RpcUnavailable(str(exc)) from None
                log.warning("%s.%s unanswered (%s); trying again", service, method, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


def reconnect_delay_max(settings: Settings) -> float:
    """The longest pause between tries to reach the broker again: a quarter of a lease.

    After an outage the scheduler gives running tasks one lease of grace to renew or report:
    a worker must be back well within it.
    """
    return min(5.0, max(0.2, settings.lease_seconds / 4))
