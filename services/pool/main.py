"""`corral pool`: starts and stops one host's worker processes as the farm's demand comes and goes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractConnection

from services.worker import leftovers
from services.worker.broker import BrokerNodes
from services.worker.rpc import AsyncRpcClient, RpcUnavailable, ServiceUnknown
from shared.config import Settings
from shared.credentials import worker_credential
from shared.resources import HostTotals, replaced_totals_note

log = logging.getLogger("corral.pool")

TICK_SECONDS = 0.5
QUICK_DEATH_SECONDS = 5.0
"""A worker that exits sooner than this after its start, untold, counts as a crash."""
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
"""How long a stopping worker may spend finishing its task before it is told to hand it back."""
HAND_BACK_SECONDS = 5.0
"""How long a worker told to hand its task back has before it is killed."""


# --- decisions: pure, so every rule is unit-tested without processes or a broker -------------

class ChildState(StrEnum):
    """Where one of the pool's running workers stands, as far as the pool can tell."""

    STARTING = "starting"    # running, not in the registry yet
    IDLE = "idle"
    BUSY = "busy"
    LEAVING = "leaving"      # draining, or gone from the registry while its process still runs
    STOPPING = "stopping"    # told to stop by the pool


@dataclass(frozen=True)
class PoolLimits:
    """How many workers a pool may run and how many it keeps waiting for work."""

    max_workers: int
    min_idle: int
    idle_timeout: float

    def __post_init__(self) -> None:
        if self.max_workers < 1 or self.min_idle < 1:
            raise ValueError("a pool needs --max-workers and --min-idle of at least 1")
        if self.min_idle > self.max_workers:
            raise ValueError(f"--min-idle {self.min_idle} is more than --max-workers "
                             f"{self.max_workers}")
        if self.idle_timeout < 0:
            raise ValueError("--idle-timeout cannot be negative")


@dataclass(frozen=True)
class ChildView:
    """What the pool knows of one of its running worker processes."""

    pid: int
    state: ChildState
    idle_since: float | None = None


def child_state(registry_state: str | None, seen_before: bool, told_to_stop: bool) -> ChildState:
    """A running child's state from its registry entry (None when it has none)."""
    if told_to_stop:
        return ChildState.STOPPING
    if registry_state is None:
        # Never registered: still starting. Registered once and gone: it left or was lost.
        return ChildState.LEAVING if seen_before else ChildState.STARTING
    if registry_state == "idle":
        return ChildState.IDLE
    if registry_state == "busy":
        return ChildState.BUSY
    return ChildState.LEAVING


def host_has_room(free: dict[str, Any] | None) -> bool:
    """Whether the negotiator's free amounts leave room for another task (None: no negotiator)."""
    if free is None:
        return True
    return float(free.get("cores") or 0) > 0 and int(free.get("memory_mb") or 0) > 0


def wants_another_worker(limits: PoolLimits, children: Sequence[ChildView], now: float,
                         not_before: float) -> bool:
    """Whether to start one more worker, host room aside: too few wait for work, the pool is
    below its limit, and no crash backoff is running."""
    if now < not_before:
        return False
    # Every running process counts, stopping ones too: the limit bounds processes on the host.
    if len(children) >= limits.max_workers:
        return False
    # A starting worker will be idle in a moment; counting it keeps one demand from starting many.
    waiting = sum(1 for child in children if child.state in (ChildState.IDLE, ChildState.STARTING))
    return waiting < limits.min_idle


def host_held(workers: Sequence[dict[str, Any]], host: str) -> bool:
    """Whether a wrangler drained or disabled this whole host (shared.worker_control), as the
    registry's entries of its workers say: a worker started now would take nothing."""
    return any(w.get("host_wanted") for w in workers if w.get("host") == host)


def idle_extras_to_stop(limits: PoolLimits, children: Sequence[ChildView],
                        now: float) -> list[int]:
    """Pids of idle workers beyond min-idle that have waited longer than idle-timeout, longest
    idle first."""
    idle = sorted((child.idle_since, child.pid) for child in children
                  if child.state == ChildState.IDLE and child.idle_since is not None)
    extras = len(idle) - limits.min_idle
    expired = [pid for since, pid in idle if now - since > limits.idle_timeout]
    return expired[:max(0, extras)]


def backoff_after_exit(quick_deaths: int, lifetime: float, told_to_stop: bool,
                       exit_code: int | None = None) -> tuple[int, float]:
    """After a worker exits: the count of quick deaths in a row, and seconds to wait before the
    next start (doubling from 1 s up to 60 s while workers keep dying soon after starting).

    A worker that was told to stop, or that left by itself with exit code 0 (it ran its
    --max-tasks), did not crash however short its life.
    """
    if told_to_stop or exit_code == 0:
        return quick_deaths, 0.0
    if lifetime >= QUICK_DEATH_SECONDS:
        return 0, 0.0
    deaths = quick_deaths + 1
    return deaths, min(FIRST_BACKOFF_SECONDS * 2 ** (deaths - 1), MAX_BACKOFF_SECONDS)


@dataclass(frozen=True)
class WorkerTemplate:
    """How the pool starts each of its workers: the `corral worker` options it passes on."""

    pool: str
    bands: list[str]
    host: str
    config: Path | None = None
    cores: float | None = None
    memory: str | None = None
    gpus: int | None = None
    max_tasks: int = 0
    """Each worker leaves after this many tasks and the pool starts a fresh one (0: never)."""
    hold_licences: tuple[str, ...] = ()
    """`--hold-licence` values: each worker holds these seats from its start to its exit."""

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "services.cli", "worker", "run", "--pool", self.pool,
                "--bands", ",".join(self.bands), "--host", self.host]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.cores is not None:
            argv += ["--cores", f"{self.cores:g}"]
        if self.memory is not None:
            argv += ["--memory", self.memory]
        if self.gpus is not None:
            argv += ["--gpus", str(self.gpus)]
        if self.max_tasks:
            argv += ["--max-tasks", str(self.max_tasks)]
        for licence in self.hold_licences:
            argv += ["--hold-licence", licence]
        return argv


# --- processes ----------------------------------------------------------------------------------

SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


@dataclass
class Child:
    """One worker process the pool started."""

    process: subprocess.Popen[bytes]
    started_at: float
    seen: bool = False
    state: ChildState = ChildState.STARTING
    idle_since: float | None = None
    told_to_stop: bool = False
    settled: bool = False  # lived past the quick-death window, so the crash count starts over

    @property
    def pid(self) -> int:
        return self.process.pid

    def view(self) -> ChildView:
        return ChildView(self.pid, self.state, self.idle_since)


class WorkerPool:
    """Runs `corral worker` children on one host as the pool's limits and the farm's demand say."""

    def __init__(self, settings: Settings, limits: PoolLimits, template: WorkerTemplate,
                 totals: HostTotals, stop_grace: float = STOP_GRACE_SECONDS) -> None:
        self.settings = settings
        self.limits = limits
        self.template = template
        self.totals = totals
        self.stop_grace = stop_grace
        self.children: list[Child] = []
        self.quick_deaths = 0
        self.not_before = 0.0  # no start before this (monotonic): the crash backoff
        self._connection: AbstractConnection | None = None
        self._rpc: AsyncRpcClient | None = None
        self._brokers = BrokerNodes(settings.amqp_uris)
        self._next_connect_at = 0.0
        self._connect_delay = 0.2
        self._reported = False
        self._conditions: set[str] = set()
        self._stopping = asyncio.Event()

    @property
    def host(self) -> str:
        return self.template.host

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_requested)
        log.info("pool %s on host %s: at most %d workers, %d kept idle, idle ones beyond that "
                 "stop after %gs", self.template.pool, self.host, self.limits.max_workers,
                 self.limits.min_idle, self.limits.idle_timeout)
        self._end_leftovers()
        stop = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                tick = asyncio.create_task(self._tick_safely())
                await asyncio.wait({tick, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not tick.done():
                    # Safe to abandon mid-call: the pool's records change only between awaits.
                    tick.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await tick
                    break
                await asyncio.wait({stop}, timeout=TICK_SECONDS)
        finally:
            stop.cancel()
            await self.stop_all()
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()
        log.info("pool stopped")
        return 0

    def _stop_requested(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping every worker of the pool")
        # Later signals change nothing: `corral up` sends one after Ctrl-C already did, and the
        # stop sequence ends in a kill anyway.
        self._stopping.set()

    async def _tick_safely(self) -> None:
        try:
            await self.tick()
        except Exception:
            # A supervisor that dies takes every worker down with it: log the fault, carry on.
            log.exception("the pool's check failed; trying again")

    async def tick(self) -> None:
        """Reap exited workers, then start or stop one as the registry and negotiator say."""
        now = time.monotonic()
        self._reap(now)
        if not await self._connected(now):
            return
        if not self._reported:
            await self._report_host()
        workers = await self._registry_workers()
        if workers is None:
            return
        self._observe(workers, now)
        for pid in idle_extras_to_stop(self.limits, self._views(), now):
            self._stop_child(pid, f"idle for more than {self.limits.idle_timeout:g}s")
        if not wants_another_worker(self.limits, self._views(), now, self.not_before):
            return
        if host_held(workers, self.host):
            self._note("held", f"{self.host} is drained or disabled: starting no worker")
            return
        self._clear("held", f"{self.host} is enabled again")
        # Asked only when a start is wanted, so an idle pool does not poll the negotiator.
        room = await self._host_has_room()
        if room:
            self._clear("no room", f"{self.host} has room again")
            self._start_child()
        elif room is False:
            self._note("no room", f"no free cores or memory on {self.host}: starting no worker")

    def _views(self) -> list[ChildView]:
        return [child.view() for child in self.children]

    # --- children -------------------------------------------------------------------------------

    def _start_child(self) -> None:
        argv = self.template.argv()
        if SETPRIV:
            # A worker whose pool dies drains as if told to stop, instead of running unwatched.
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        # Its own process group: a Ctrl-C at the terminal reaches the pool, which stops its
        # workers in order (finish, then hand back), not every worker at once.
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0)
        self.children.append(Child(process, time.monotonic()))
        idle = sum(1 for child in self.children if child.state == ChildState.IDLE)
        log.info("started worker pid %d (%d running, %d of them idle)", process.pid,
                 len(self.children), idle)

    def _stop_child(self, pid: int, why: str) -> None:
        for child in self.children:
            if child.pid == pid and not child.told_to_stop:
                child.told_to_stop = True
                child.state = ChildState.STOPPING
                log.info("stopping worker pid %d: %s", pid, why)
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)

    def _reap(self, now: float) -> None:
        for child in list(self.children):
            code = child.process.poll()
            if code is None:
                if not child.settled and now - child.started_at >= QUICK_DEATH_SECONDS:
                    child.settled = True
                    self.quick_deaths = 0
                continue
            self.children.remove(child)
            self._end_leftovers()
            lifetime = now - child.started_at
            if child.told_to_stop:
                log.info("worker pid %d stopped (exit code %d)", child.pid, code)
                continue
            self.quick_deaths, delay = backoff_after_exit(self.quick_deaths, lifetime, False, code)
            if code == 0:
                log.info("worker pid %d left after its --max-tasks; a fresh one starts when "
                         "needed", child.pid)
            elif delay:
                self.not_before = max(self.not_before, now + delay)
                log.warning("worker pid %d exited with code %d %.1fs after starting (%d quick "
                            "exits in a row): backing off %gs before starting another",
                            child.pid, code, lifetime, self.quick_deaths, delay)
            else:
                log.warning("worker pid %d exited with code %d after %.0fs", child.pid, code,
                            lifetime)

    def _end_leftovers(self) -> None:
        """End what attempts of workers that died on this host left running (a restarted pool,
        a worker that exited): nothing of a lost attempt may run when its task runs again."""
        leftovers.end_leftovers(leftovers.attempts_dir(self.settings.storage_root, self.host))

    def _observe(self, workers: list[dict[str, Any]], now: float) -> None:
        mine = {int(w["pid"]): w for w in workers if w.get("pid") and w.get("host") == self.host}
        for child in self.children:
            entry = mine.get(child.pid)
            child.seen = child.seen or entry is not None
            child.state = child_state(None if entry is None else str(entry["state"]), child.seen,
                                      child.told_to_stop)
            if child.state != ChildState.IDLE:
                child.idle_since = None
            elif child.idle_since is None:
                child.idle_since = now

    async def stop_all(self) -> None:
        """SIGTERM (finish the task), after the grace SIGTERM again (hand it back), then SIGKILL."""
        for child in self.children:
            if not child.told_to_stop:
                child.told_to_stop = True
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        if not await self._wait_for_children(self.stop_grace):
            log.warning("workers still running after %gs: telling them to hand their tasks back",
                        self.stop_grace)
            self._signal_running(signal.SIGTERM)  # a worker's second SIGTERM hands back at once
            if not await self._wait_for_children(HAND_BACK_SECONDS):
                log.warning("killing the workers that did not stop")
                self._signal_running(signal.SIGKILL)
                await self._wait_for_children(None)
        for child in self.children:
            log.info("worker pid %d stopped (exit code %s)", child.pid, child.process.returncode)
        self.children.clear()

    def _signal_running(self, signum: int) -> None:
        for child in self.children:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signum)

    async def _wait_for_children(self, seconds: float | None) -> bool:
        deadline = None if seconds is None else time.monotonic() + seconds
        while any(child.process.poll() is None for child in self.children):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    # --- the farm -------------------------------------------------------------------------------

    async def _connected(self, now: float) -> bool:
        if self._connection is not None and not self._connection.is_closed:
            return True
        if now < self._next_connect_at:
            return False
        try:
            connection = await self._brokers.connect(timeout=self.settings.rpc_timeout_seconds)
            rpc = AsyncRpcClient(connection, client_name="corral_pool",
                                 token=worker_credential(self.settings))
            await rpc.start()
        except Exception as exc:
            self._note("broker", f"cannot reach the broker ({exc}); retrying")
            self._next_connect_at = now + self._connect_delay
            self._connect_delay = min(self._connect_delay * 2, 5.0)
            return False
        self._clear("broker", "connected to the broker")
        self._connection, self._rpc, self._connect_delay = connection, rpc, 0.2
        return True

    async def _call(self, service: str, method: str, **kwargs: Any) -> Any:
        if self._rpc is None:
            raise RpcUnavailable("not connected")
        return await self._rpc.call(service, method, timeout=self.settings.rpc_timeout_seconds,
                                    **kwargs)

    async def _report_host(self) -> None:
        """Tell the negotiator what this host has, as each worker also does when it connects."""
        resources = self.totals.resources
        try:
            reply = await self._call("resource_negotiator", "report_host", host=self.host,
                             cores=resources.cores, memory_mb=resources.memory_mb,
                             gpus=[{"index": g.index, "model": g.model, "memory_mb": g.memory_mb}
                                   for g in self.totals.gpus],
                             custom=dict(resources.custom))
        except ServiceUnknown:
            return  # tried again next tick: the negotiator may not have started yet
        except RpcUnavailable as exc:
            self._note("report", f"could not report host totals to the negotiator: {exc}")
            return
        self._clear("report", "the negotiator answers again")
        self._reported = True
        log.info("reported %s to the negotiator: %g cores, %d MB, %d GPUs", self.host,
                 resources.cores, resources.memory_mb, resources.gpus)
        note = replaced_totals_note(self.host, reply)
        if note:
            log.warning("%s", note)

    async def _registry_workers(self) -> list[dict[str, Any]] | None:
        try:
            workers: list[dict[str, Any]] = await self._call(
                "registry", "list_workers", alive=True, pool=self.template.pool)
        except ServiceUnknown:
            # Without the registry idle and busy cannot be told apart: change nothing meanwhile.
            self._note("registry", "the registry is not running yet; waiting for it")
            return None
        except RpcUnavailable as exc:
            self._note("registry", f"the registry does not answer ({exc}); waiting for it")
            return None
        self._clear("registry", "the registry answers")
        return workers

    async def _host_has_room(self) -> bool | None:
        """Whether the host has room: True without a negotiator, None when it does not answer."""
        try:
            free: dict[str, Any] = await self._call("resource_negotiator", "free", host=self.host)
        except ServiceUnknown:
            self._note("negotiator", "no resource negotiator on this farm: starting workers "
                                     "without asking for the host's free resources")
            return True
        except RpcUnavailable as exc:
            self._note("negotiator", f"the negotiator does not answer ({exc}); starting no worker")
            return None
        self._clear("negotiator", "the negotiator answers")
        return host_has_room(free)

    def _note(self, condition: str, message: str) -> None:
        """Log a condition when it begins, not on every tick while it lasts."""
        if condition not in self._conditions:
            self._conditions.add(condition)
            log.warning("%s", message)

    def _clear(self, condition: str, message: str) -> None:
        if condition in self._conditions:
            self._conditions.discard(condition)
            log.info("%s", message)


def run_pool(settings: Settings, limits: PoolLimits, template: WorkerTemplate,
             totals: HostTotals, stop_grace: float = STOP_GRACE_SECONDS) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(WorkerPool(settings, limits, template, totals, stop_grace).run())
