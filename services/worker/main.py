"""The worker: consumes its pool's band queues, claims, runs one payload at a time, reports back.

A message is acknowledged as soon as its claim is recorded, so a long render never meets the
broker's consumer timeout; while a payload runs the worker consumes nothing, so no message waits
behind it. Every report is retried until the scheduler answers, and every report is idempotent.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import socket
import time
import uuid
from enum import StrEnum
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from services.worker import leftovers
from services.worker.control import NameClaim, Obedience
from services.worker.held_licence import HeldLicences
from services.worker.link import FarmLink
from services.worker.process import FENCED, Supervisors, TaskRun
from services.worker.rpc import AsyncRpcClient, RpcUnavailable, ServiceUnknown
from services.worker.scratch import attempt_scratch, storage_shortage, wait_for_room
from shared.config import Settings
from shared.errors import StaleLease
from shared.leases import fence_margin
from shared.pathmap import PathMap
from shared.resources import HostTotals, detect_host_totals
from shared.storage import task_log_path, task_result_path

log = logging.getLogger("corral.worker")

RESOURCES, LICENCES = "resources", "licences"
Booking = asyncio.Task[dict[str, Any] | None]
"""A reservation or licence lease being made: the grant, or None when refused."""

CLAIMS_REMEMBERED = 10_000
"""How many claimed attempts a worker remembers, to drop late copies of their messages."""


class DrainMode(StrEnum):
    FINISH = "finish"          # the running task finishes, then the worker leaves
    HAND_BACK = "hand-back"    # the running task is killed and handed back, not charged


class Worker(FarmLink):
    """One worker process: at most one payload at a time (its broker side: FarmLink)."""

    def __init__(self, settings: Settings, pool: str, bands: list[str],
                 drain_mode: DrainMode = DrainMode.FINISH, nice: int | dict[str, int] | None = None,
                 worker_id: str | None = None, memory_headroom: float = 1.0,
                 host_totals: HostTotals | None = None, host: str | None = None,
                 max_tasks: int = 0, name: str | None = None,
                 hold_licences: dict[str, int] | None = None) -> None:
        known = {b.name for b in settings.bands}
        unknown = [b for b in bands if b not in known]
        if unknown:
            raise ValueError(f"unknown band {unknown[0]!r}; bands are {sorted(known)}")
        self.settings = settings
        self.pool = pool
        self.bands = bands
        self.drain_mode = drain_mode
        # pyLoadBalancer's processP: one nice level for every payload, or one per band.
        self.nice_by_band = (dict(nice) if isinstance(nice, dict)
                             else {band: nice for band in bands} if nice is not None else {})
        self.memory_headroom = memory_headroom
        # Pixyz's MAX_TASKS_BEFORE_SHUTDOWN: leave after this many tasks (0: never), so a
        # payload library that leaks into the worker cannot grow it for ever.
        self.max_tasks = max_tasks
        # A name of its own lets one machine stand in for several hosts, or a container name
        # the machine it runs on rather than itself.
        self.host = host or socket.gethostname()
        self.host_totals = host_totals or detect_host_totals(self.host)
        self.negotiated = True  # until the farm turns out to run no resource negotiator
        self.worker_id = worker_id or f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Who this worker is across restarts, with its host: what a wrangler wants of it
        # (drained, disabled) is kept under that (services.worker.control).
        self.name = name
        self._name_claim = NameClaim(leftovers.attempts_dir(settings.storage_root, self.host).parent,
                                     pool)
        self.control = Obedience(self._stop_consuming, self._resume_consuming, self._stop_asked)
        self.held = HeldLicences(hold_licences or {}, self.worker_id, self.host)
        self.path_map = PathMap(settings.path_map)
        self.current: TaskRun | None = None
        self.tasks_run = 0
        # Attempts this worker has claimed. The scheduler answers a claim from the worker that
        # already holds the task with its lease again (its first reply may have been lost), so
        # a copy of the message arriving after the payload ran, before its finish report is
        # applied, would run the attempt a second time: such copies are dropped here.
        self._claimed: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()
        self._supervisors = Supervisors()
        self._attempts_dir = leftovers.attempts_dir(settings.storage_root, self.host)
        self._cgroup_base = leftovers.cgroup_base()
        self._claim_sent_at = 0.0
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._reports: AbstractChannel | None = None
        self._queues: list[AbstractQueue] = []
        self._consumer_tags: list[tuple[AbstractQueue, str]] = []
        self._rpc: AsyncRpcClient | None = None
        self._connected = asyncio.Event()
        self._draining = asyncio.Event()
        self._stopped = asyncio.Event()

    # --- life cycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        loop.add_signal_handler(signal.SIGINT, self.drain)
        # What attempts of a worker that died on this host left behind ends before we start.
        leftovers.end_leftovers(self._attempts_dir)
        self.name = self.name or self._name_claim.take()
        connection_task = asyncio.create_task(self._stay_connected())
        heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        outbox_task = asyncio.create_task(self._outbox_loop())
        holding_task = asyncio.create_task(self.held.keep(
            self._call, self.settings.heartbeat_seconds, self._on_held))
        try:
            await self._work_loop()
        finally:
            holding_task.cancel()
            await self._supervisors.close()
            await self.held.give_back(self._call)
            await self._leave()
            self._stopped.set()
            self._name_claim.release()
            heartbeat_task.cancel()
            outbox_task.cancel()
            connection_task.cancel()
            if self._connection is not None:
                await self._connection.close()

    def drain(self, mode: DrainMode | None = None) -> None:
        """Stop taking work; a second call while a task runs hands it back at once."""
        if self._draining.is_set() and self.current is not None:
            self.current.kill("handed back: worker stopping")
            return
        if mode is not None:
            self.drain_mode = mode
        log.info("draining (%s)", self.drain_mode)
        self._draining.set()
        loop = asyncio.get_running_loop()
        loop.create_task(self._stop_consuming())
        # Leave the registry first, so the scheduler sends nothing more our way (not even the
        # task we are about to hand back).
        leaving = loop.create_task(self._leave())
        if self.current is not None and self.drain_mode == DrainMode.HAND_BACK:
            current = self.current
            leaving.add_done_callback(lambda _: current.kill("handed back: worker stopping"))

    def _stop_asked(self, now: bool) -> None:
        """A wrangler's stop: leave after the running task, or (`now`) hand it back first."""
        self.drain(DrainMode.HAND_BACK if now else DrainMode.FINISH)

    async def _resume_consuming(self) -> None:
        if self.current is None and not self._draining.is_set():
            await self._start_consuming()

    # --- consuming ------------------------------------------------------------------------------

    async def _start_consuming(self) -> None:
        if self._consumer_tags or self._channel is None or self._channel.is_closed \
                or not self.control.takes_work or not self.held.ready:
            return
        try:
            for queue in self._queues:
                tag = await queue.consume(self._inbox.put)
                self._consumer_tags.append((queue, tag))
        except (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError,
                ConnectionError) as exc:
            # The connection went between the check and the call: reconnecting consumes again.
            log.warning("could not consume (%s); the reconnect will", exc)
            self._consumer_tags.clear()

    async def _stop_consuming_then_ack(self, message: AbstractIncomingMessage) -> None:
        await self._stop_consuming()
        await _settle(message.ack())
        await self._put_back_inbox()

    async def _put_back_inbox(self) -> None:
        """Give back what else came before the consumers stopped (on quorum queues each band's
        consumer may hold one), rather than hold it through the payload."""
        await asyncio.sleep(0)  # a delivery already received reaches the inbox first
        while not self._inbox.empty():
            await _settle(self._inbox.get_nowait().reject(requeue=True))

    async def _on_held(self, held: bool) -> None:
        """The licences held for the worker's life came or went: take work, or stop taking it."""
        if not held:
            await self._stop_consuming()
        elif self.current is None and not self._draining.is_set():
            await self._start_consuming()

    def _drop_inbox(self) -> None:
        while not self._inbox.empty():
            self._inbox.get_nowait()  # unacked on a dead channel: the broker redelivers them

    async def _next_message(self) -> AbstractIncomingMessage | None:
        getter = asyncio.ensure_future(self._inbox.get())
        draining = asyncio.ensure_future(self._draining.wait())
        done, _ = await asyncio.wait({getter, draining}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            draining.cancel()
            return getter.result()
        getter.cancel()
        return None

    # --- the work -------------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while not self._draining.is_set():
            message = await self._next_message()
            if message is None:
                break
            if not self.control.takes_work:  # delivered just before a drain or disable
                await _settle(message.reject(requeue=True))
                continue
            if await self._held_for_storage(message):
                continue
            try:
                body = json.loads(message.body)
                task_id, attempt = int(body["task_id"]), int(body["attempt"])
            except (ValueError, KeyError, TypeError):
                log.error("dropping a malformed message: %r", message.body[:200])
                await _settle(message.ack())
                continue
            if (task_id, attempt) in self._claimed:
                log.info("dropping a copy of task %s attempt %s: this worker already ran it",
                         task_id, attempt)
                await _settle(message.ack())
                continue
            # A message that says what the task books lets the bookings travel alongside the
            # claim rather than after it; a stale claim gives them straight back.
            bookings = self._book(task_id, attempt, body)
            claim = await self._claim(task_id, attempt)
            if claim is not None and claim.get("status") == "claimed":
                self._remember_claim(task_id, attempt)
            if claim is None or claim.get("status") != "claimed":
                if bookings:
                    asyncio.get_running_loop().create_task(self._give_back(bookings))
                await _settle(message.ack())  # duplicate or stale delivery: nothing to start
                continue
            # The payload starts at once; consumers are cancelled and then the message acked
            # alongside (no second message can arrive while this one is unacknowledged).
            settle = asyncio.create_task(self._stop_consuming_then_ack(message))
            # A message from an older scheduler may not say: then the claim's reply does.
            await self._run(claim, bookings if body.keys() & {RESOURCES, LICENCES} else None)
            await settle
            if self.max_tasks and self.tasks_run >= self.max_tasks and not self._draining.is_set():
                log.info("ran %d tasks (--max-tasks): leaving", self.tasks_run)
                self.drain()
            if not self._draining.is_set():
                await self._start_consuming()
        log.info("stopped taking work")

    def _remember_claim(self, task_id: int, attempt: int) -> None:
        self._claimed[(task_id, attempt)] = None
        while len(self._claimed) > CLAIMS_REMEMBERED:
            self._claimed.popitem(last=False)
    async def _held_for_storage(self, message: AbstractIncomingMessage) -> bool:
        """While the storage root is short of space, put the message back and take nothing."""
        settings = self.settings
        if await storage_shortage(settings.storage_root, settings.storage_min_free_bytes) is None:
            return False
        await self._stop_consuming()
        await _settle(message.reject(requeue=True))
        await self._put_back_inbox()
        await wait_for_room(settings.storage_root, settings.storage_min_free_bytes,
                            settings.heartbeat_seconds, self._draining)
        if not self._draining.is_set():
            await self._start_consuming()
        return True

    async def _claim(self, task_id: int, attempt: int) -> dict[str, Any] | None:
        # The lease runs from no earlier than now: fencing counts from here, not from the reply.
        self._claim_sent_at = time.monotonic()
        try:
            return await self._call("scheduler", "claim_task", attempts=None, task_id=task_id,
                                    attempt=attempt, worker_id=self.worker_id, host=self.host)
        except RpcUnavailable:
            return None

    # --- what a task holds while it runs: a reservation on this host, licence leases ------------

    def _booking_id(self, task_id: int, attempt: int) -> str:
        # The worker is part of the id: a duplicate delivery of the same attempt to another
        # worker books (and gives back) its own, never what the running worker holds.
        return f"task {task_id} attempt {attempt} on {self.worker_id}"

    def _book(self, task_id: int, attempt: int, wants: dict[str, Any]) -> dict[str, Booking]:
        """Start booking what `wants` names ({"resources", "preferred", "licences"})."""
        bookings: dict[str, Booking] = {}
        booking_id = self._booking_id(task_id, attempt)
        if wants.get("resources") and self.negotiated:
            bookings[RESOURCES] = asyncio.create_task(self._call(
                "resource_negotiator", "reserve", attempts=None, optional_service=True,
                reservation_id=booking_id, host=self.host, worker_id=self.worker_id,
                task_id=task_id, attempt=attempt, minimum=wants["resources"],
                preferred=wants.get("preferred")))
        licences = self.held.uncovered(wants.get("licences"))  # the held seat covers its share
        if licences:
            bookings[LICENCES] = asyncio.create_task(self._call(
                "license", "acquire", attempts=None, optional_service=True, lease_id=booking_id,
                task_id=task_id, attempt=attempt, worker_id=self.worker_id,
                licences=licences, host=self.host))
        return bookings

    async def _settle_bookings(self, bookings: dict[str, Booking]
                               ) -> tuple[dict[str, dict[str, Any]], str | None]:
        """What each booking got, and the reason the task cannot run here now (None: it can)."""
        held: dict[str, dict[str, Any]] = {}
        refused: str | None = None
        for kind, booking in bookings.items():
            try:
                got = await booking
            except ServiceUnknown:
                if kind == RESOURCES:
                    self.negotiated = False  # a farm without a negotiator: nothing to book
                    log.warning("no resource negotiator on this farm: resources not reserved")
                else:
                    refused = refused or "no licence service is running on this farm"
                continue
            except Exception as exc:  # a refusal naming bad input, or the service failing
                refused = refused or f"could not book {kind}: {exc}"
                continue
            if got is None:
                refused = refused or f"{kind} refused"
            else:
                held[kind] = got
        return held, refused

    async def _give_back(self, bookings: dict[str, Booking]) -> None:
        """Release what bookings got, for a task this worker will not run after all."""
        held, _ = await self._settle_bookings(bookings)
        await self._release_all(held)
        if held:
            log.info("gave back %s: the claim was refused",
                     ", ".join(h["id"] for h in held.values()))

    async def _release_all(self, held: dict[str, dict[str, Any]]) -> None:
        """Give back now; the services also free what an ended attempt or a lost worker held."""
        for kind, got in held.items():
            service, argument = (("resource_negotiator", "reservation_id") if kind == RESOURCES
                                 else ("license", "lease_id"))
            try:
                await self._call(service, "release", attempts=5, optional_service=True,
                                 **{argument: got["id"]})
            except (RpcUnavailable, ServiceUnknown) as exc:
                log.warning("could not release %s (%s will on the task's end): %s", got["id"],
                            service, exc)

    async def _run(self, claim: dict[str, Any],
                   bookings: dict[str, Booking] | None = None) -> None:
        storage = self.settings.storage_root
        name = f"{claim['task_id']}.{claim['attempt']}"
        run = TaskRun(task_id=claim["task_id"], job_id=claim["job_id"], attempt=claim["attempt"],
                      command=claim["command"], shell=claim["shell"], env=claim["env"],
                      cwd=claim["cwd"], timeout=claim["timeout"],
                      stall_timeout=claim.get("stall_timeout"),
                      nice=self.nice_by_band.get(claim.get("band", "")),
                      memory_limit_mb=(claim.get("resources") or {}).get("memory_mb") or None,
                      memory_headroom=self.memory_headroom,
                      cores=(claim.get("resources") or {}).get("cores") or None,
                      log_path=task_log_path(storage, claim["job_id"], claim["task_id"],
                                             claim["attempt"]),
                      result_path=task_result_path(storage, claim["job_id"], claim["task_id"],
                                                   claim["attempt"]),
                      marker=f"{self.worker_id}.{name}", attempts_dir=self._attempts_dir,
                      log_max_bytes=self.settings.log_max_bytes,
                      log_head_bytes=self.settings.log_head_bytes,
                      cgroup_base=self._cgroup_base, lease_token=claim["lease_token"])
        run.fence_at(self._fence_deadline(self._claim_sent_at))
        if bookings is None:
            # A message that did not say what to book (published by an older scheduler).
            bookings = self._book(claim["task_id"], claim["attempt"], claim)
        # The task is ours from the claim on: its lease is renewed (and a cancel reaches it)
        # while the bookings are still being answered, however long a service takes to.
        self.current = run
        renewals = asyncio.create_task(self._renew_loop(run, claim["lease_token"]))
        held: dict[str, dict[str, Any]] = {}
        try:
            held, refused = await self._settle_bookings(bookings)
            if run._kill_reason is None and refused is not None:
                await self._report("hand_back_task", task_id=claim["task_id"],
                                   lease_token=claim["lease_token"],
                                   reason=self._refusal(claim, refused),
                                   delay_seconds=self.settings.heartbeat_seconds)
                return
            grant = held.get(RESOURCES)
            if grant is not None:
                granted = grant["resources"]
                run.cores, run.memory_limit_mb = granted["cores"], granted["memory_mb"] or None
                run.gpu_indices = tuple(grant["gpu_indices"])
            if run._kill_reason is None:  # not cancelled, handed back or lost meanwhile
                # Nothing of a lost attempt may still run on this host when this one starts.
                leftovers.end_leftovers(self._attempts_dir)
                # Paths as this node names them; the log's first line says what runs.
                mapped = self.path_map.map_task(run.command, run.cwd, run.env, run.shell)
                if mapped is not None:
                    run.command, run.cwd, run.env = mapped.command, mapped.cwd, mapped.env
                    run._note(mapped.log_line())
                async with attempt_scratch(storage, claim) as scratch_env:
                    await run.run({**self._payload_env(), **scratch_env},
                                  self.settings.log_tail_bytes, self._supervisors)
                self.tasks_run += 1
        finally:
            renewals.cancel()
            self.current = None
            if held:
                asyncio.get_running_loop().create_task(self._release_all(held))
        if run._kill_reason and run._kill_reason.startswith("handed back"):
            await self._report("hand_back_task", task_id=run.task_id,
                               lease_token=claim["lease_token"], reason=run._kill_reason)
        elif run._kill_reason == FENCED:
            # Self-fenced: say the attempt is lost (uncharged), if the scheduler can still hear.
            asyncio.get_running_loop().create_task(self._report_fenced(run, claim["lease_token"]))
        elif run._kill_reason in ("cancelled", "lease lost"):
            pass  # the scheduler already knows; a report would be refused
        else:
            await self._publish_finish(run.finish_report())
            if run.outcome_path is not None:
                # With the broker now: no other worker of the host need send it for us.
                run.outcome_path.unlink(missing_ok=True)

    def _refusal(self, claim: dict[str, Any], refused: str) -> str:
        """The hand-back reason a person reads in the task's attempts."""
        if refused == f"{RESOURCES} refused":
            wanted = claim["resources"]
            return (f"no room on {self.host} for {wanted['cores']:g} cores / "
                    f"{wanted['memory_mb']} MB / {wanted['gpus']} GPUs")
        if refused == f"{LICENCES} refused":
            wanted = ", ".join(f"{count} {name}" for name, count
                               in sorted((claim.get("licences") or {}).items()))
            return f"licences not free: {wanted}"
        return refused

    def _payload_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("CORRAL_")]:
            del env[key]  # the worker's own settings are not the payload's business
        return env

    def _fence_deadline(self, sent_at: float) -> float:
        """When a lease renewed by a call sent at `sent_at` (monotonic) must be given up.

        The scheduler's lease runs from when it applied the call, which is after `sent_at`, so
        fencing one margin earlier than `sent_at + lease` always kills the payload before the
        scheduler can expire the lease and give the task to another worker (README: Faults).
        """
        return sent_at + self.settings.lease_seconds - fence_margin(self.settings)

    async def _renew_loop(self, run: TaskRun, token: str) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            progress = run.scan_progress()
            sent_at = time.monotonic()
            try:
                await self._rpc_call("scheduler", "renew_lease", task_id=run.task_id,
                                     lease_token=token, progress=progress)
                run.fence_at(self._fence_deadline(sent_at))
            except StaleLease as exc:
                log.warning("lease lost (%s): killing the task", exc)
                run.kill("lease lost")
                return
            except RpcUnavailable as exc:
                log.warning("could not renew the lease of task %s: %s", run.task_id, exc)
            if run._deadline is not None and time.monotonic() >= run._deadline:
                log.warning("task %s: lease not renewed in time: killing it", run.task_id)
                run.kill(FENCED)
                return

    async def _report_fenced(self, run: TaskRun, token: str) -> None:
        try:
            await self._call("scheduler", "hand_back_task", attempts=3, task_id=run.task_id,
                             lease_token=token, reason=FENCED)
        except (StaleLease, RpcUnavailable) as exc:
            log.info("task %s: the scheduler has the lost lease already (%s)", run.task_id, exc)

    async def _report(self, method: str, **kwargs: Any) -> None:
        try:
            await self._call("scheduler", method, attempts=None, **kwargs)
        except StaleLease as exc:
            log.warning("%s refused: %s", method, exc)


async def _settle(awaitable: Any) -> None:
    """Ack a message; on a dead channel the broker redelivers it, and the claim makes that safe."""
    try:
        await awaitable
    except Exception as exc:
        log.debug("could not acknowledge: %s", exc)


def run_worker(settings: Settings, pool: str, bands: list[str],
               drain_mode: DrainMode = DrainMode.FINISH, nice: int | dict[str, int] | None = None,
               memory_headroom: float = 1.0, host_totals: HostTotals | None = None,
               host: str | None = None, max_tasks: int = 0, name: str | None = None,
               hold_licences: dict[str, int] | None = None) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(settings, pool, bands, drain_mode, nice, memory_headroom=memory_headroom,
                    host_totals=host_totals, host=host, max_tasks=max_tasks, name=name,
                    hold_licences=hold_licences)
    asyncio.run(worker.run())
