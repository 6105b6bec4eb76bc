"""The scheduler's in-process state: its store, the live workers, hosts and licences it has heard
of, and the release loop that publishes what may run next (on the leading instance only)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from services.common.trouble import Troubles
from services.scheduler import store as store_ops
from services.scheduler.band_publisher import BandPublisher
from services.scheduler.dispatch import Amounts, IdleWorker, Release
from services.scheduler.leadership import Leadership
from services.scheduler.refusals import RefusalPolicy
from shared.bands import REPORTS_QUEUE, queue_name
from shared.config import Settings
from shared.db import Store
from shared.worker_control import takes_work

log = logging.getLogger(__name__)


def _amounts(wire: dict[str, Any]) -> Amounts:
    return (float(wire.get("cores") or 0), int(wire.get("memory_mb") or 0),
            int(wire.get("gpus") or 0))


class Dispatcher:
    """The scheduler's in-process state: its store, the live workers, and the release loop."""

    def __init__(self, settings: Settings, store: Store, spawn: Any) -> None:
        self.settings = settings
        self.leadership: Leadership | None = None
        """This instance's part in the leader lease; None: it acts alone (tests, tools)."""
        self.views_stale = False
        """True from a takeover until the live workers, hosts and licences were read again."""
        self.refusals = RefusalPolicy.from_settings(settings)
        self.store = store
        self.publisher = BandPublisher(settings.amqp_uri, settings.queue_type)
        # Its own channel for the rare messages outside release passes (finish reports tried
        # again or set aside), so they never hold the lock that says a pass is running.
        self.side_publisher = BandPublisher(settings.amqp_uri, settings.queue_type)
        self._side_lock = threading.Lock()
        self.workers: dict[str, IdleWorker] = {}
        # Live workers a wrangler drained, disabled or is stopping, with what is wanted of
        # them: never released to (shared.worker_control), but `why` names them.
        self.held: dict[str, tuple[IdleWorker, str]] = {}
        self.bands_high_first = [b.name for b in sorted(settings.bands, reverse=True)]
        self._spawn = spawn
        self._lock = threading.Lock()
        self._wanted = False
        self._last_aging = time.monotonic()
        # When each user last had a task released: fairness's tie-break between users running
        # as many tasks. Kept in memory; after a restart every user starts even.
        self.last_served: dict[str, float] = {}
        self._served_clock = 0.0
        # host -> {"totals": amounts, "free": amounts}, from the negotiator's host_changed events.
        self.hosts: dict[str, dict[str, Amounts]] = {}
        # licence -> {"total", "free"} from the licence service's licence_changed events and
        # list_pools; None until it has answered (tasks needing licences wait until then).
        self.licences: dict[str, dict[str, int]] | None = None
        # What of the background work is failing (database, broker), for the health answer.
        self.troubles = Troubles()
        self.cut_off = False
        """True while our own call through the broker goes unanswered."""
        # Why nothing new starts (the storage root is short of space), as the cleanup service
        # last said, and when we heard it: a warning it stops repeating lapses.
        self._storage_low: tuple[str, float] | None = None

    STORAGE_LOW_LAPSES_AFTER = 60.0
    """Seconds a storage warning holds without being repeated (the cleanup service repeats it
    every few seconds while space is short, so a cleanup service that died stops no farm)."""

    def set_storage_low(self, reason: str | None) -> None:
        self._storage_low = None if reason is None else (reason, time.monotonic())

    def storage_shortage(self) -> str | None:
        """Why the storage root holds back every release now, or None."""
        if self._storage_low is None:
            return None
        reason, heard = self._storage_low
        return reason if time.monotonic() - heard < self.STORAGE_LOW_LAPSES_AFTER else None

    def set_host(self, host: str, totals: dict[str, Any], free: dict[str, Any]) -> bool:
        """Record a host's amounts; True when it has more room than before (or is new)."""
        before = self.hosts.get(host)
        self.hosts[host] = view = {"totals": _amounts(totals), "free": _amounts(free)}
        return before is None or any(now > was for now, was in zip(view["free"], before["free"],
                                                                   strict=True))

    def set_licence(self, name: str, total: int, free: int) -> bool:
        """Record a licence pool's tokens; True when more are free than before (or it is new).

        `free` is what a release pass may count on: the pool's `usable` where the licence
        service says it (seats shared on a host, or held by workers for their life), else free.
        """
        if self.licences is None:
            self.licences = {}
        before = self.licences.get(name)
        self.licences[name] = {"total": int(total), "free": int(free)}
        return before is None or int(free) > before["free"]

    def set_licences(self, pools: list[dict[str, Any]]) -> None:
        """Replace the whole licence picture (a pool no longer listed was removed)."""
        self.licences = {pool["name"]: {"total": int(pool["total"]),
                                        "free": int(pool.get("usable", pool["free"]))}
                         for pool in pools}

    def set_worker(self, worker_id: str, pool: str, bands: list[str], host: str = "",
                   wanted: str | None = None) -> None:
        """Record a live worker; one that is not to take work (`wanted`) is held aside."""
        worker = IdleWorker(worker_id, pool, frozenset(bands), host)
        self.drop_worker(worker_id)
        if takes_work(wanted):
            self.workers[worker_id] = worker
        else:
            self.held[worker_id] = (worker, str(wanted))

    def set_wanted(self, worker_id: str, wanted: str) -> bool:
        """Apply a wanted state to a worker we know; True when it may now take work."""
        known = self.workers.get(worker_id) or (self.held.get(worker_id) or (None, ""))[0]
        if known is None:
            return False  # the next refresh brings it, with its wanted state
        self.set_worker(worker_id, known.pool, list(known.bands), known.host, wanted)
        return takes_work(wanted)

    def drop_worker(self, worker_id: str) -> None:
        self.workers.pop(worker_id, None)
        self.held.pop(worker_id, None)

    def live_workers(self) -> list[IdleWorker]:
        """Every live worker, held or not: the hosts that may take a task some time."""
        return [*self.workers.values(), *(worker for worker, _ in self.held.values())]

    def request_release(self) -> None:
        """Ask for a release pass soon, without making the caller wait for it (a standby's
        request is left to the leader's sweep, which runs a pass every second)."""
        if not self.leading():
            return
        self._wanted = True
        if not self._lock.locked():
            self._spawn(self._release_in_background)

    def _release_in_background(self) -> None:
        # A managed thread that raises ends the whole service: a failing pass is noted instead,
        # and the sweep runs the next one.
        self.troubles.run("release pass", self.release_now)

    def reports_consumed(self) -> bool:
        """Whether a consumer takes finish reports from their queue now.

        Our finish-report consumer has a broker connection of its own, which comes back after
        an outage on its own schedule: until it does, reports of attempts that ended in time
        wait unread in the queue, and expiring those attempts' leases would run them again.
        """
        with self._side_lock:
            counts = self.side_publisher.queue_counts(REPORTS_QUEUE)
        return counts is not None and counts[1] > 0

    def may_expire_leases(self, broker_answered: bool) -> bool:
        """Whether the sweep may expire leases now, given whether we hear workers through the
        broker: our own call crosses it, and our finish reports are consumed.

        While the scheduler cannot hear the broker, workers' renewals and finish reports cannot
        reach it either: their leases are not expired then. When it hears the broker again it
        gives every running task one lease of grace (as at start-up) before expiring any.
        """
        if not broker_answered:
            if not self.cut_off:
                log.warning("the broker does not answer us, or our finish reports wait unread: "
                            "no lease expires until both flow")
            self.cut_off = True
            return False
        if self.cut_off:
            extended = store_ops.extend_all_leases(self.store, self.settings.lease_seconds)
            self.cut_off = False
            log.warning("the broker answers again: gave %d running tasks one lease of grace",
                        extended)
            return False
        return True

    def leading(self) -> bool:
        """Whether this instance leads now: only the leader releases, publishes, expires leases
        and ages; every instance answers RPC and keeps its views."""
        return self.leadership is None or self.leadership.leading()

    def take_over(self) -> None:
        """Start a term as leader as at start-up: give running tasks one lease of grace (their
        renewals may have gone unanswered meanwhile), take fairness's clock from the database,
        and release nothing until the views are read again (the service's refresh)."""
        extended = store_ops.extend_all_leases(self.store, self.settings.lease_seconds)
        if extended:
            log.info("gave %d running tasks one lease of grace on taking the lead", extended)
        self.last_served = store_ops.last_served(self.store)
        self._served_clock = max(self.last_served.values(), default=0.0)
        self._last_aging = time.monotonic()
        self.cut_off = False
        self.views_stale = True

    def health(self) -> dict[str, Any]:
        answer = self.troubles.health()
        if self.leadership is not None:
            answer["leadership"] = self.leadership.health()
        if self.cut_off:
            answer["ok"] = False
            answer["troubles"]["broker"] = {"error": "our own calls through the broker go "
                                                     "unanswered"}
        return answer

    def release_now(self) -> int:
        """Run release passes until nobody has asked for another; at most one runs at a time."""
        self._wanted = True
        if not self.leading() or self.views_stale:
            return 0  # the leader releases, once it knows the farm as it is now
        if self.storage_shortage() is not None:
            return 0  # nothing new starts until the storage root has room (workers say why)
        if not self._lock.acquire(blocking=False):
            return 0  # the running pass sees _wanted and goes round again
        released = 0
        try:
            while self._wanted:
                self._wanted = False
                plan = store_ops.plan_next_releases(self.store, list(self.workers.values()),
                                                    self.bands_high_first,
                                                    last_served=self.last_served,
                                                    host_free={host: view["free"] for host, view
                                                               in self.hosts.items()},
                                                    licence_free={name: pool["free"] for name, pool
                                                                  in (self.licences or {}).items()})
                if not plan or not self.leading():
                    continue  # nothing to do, or our lease ran out while we planned
                for release in plan:
                    self._served_clock += 1
                    self.last_served[release.user] = self._served_clock
                published = self.publisher.publish(plan)
                store_ops.mark_dispatched(self.store, published)
                released += len(published)
        finally:
            self._lock.release()
        return released

    def send(self, queue: str, body: dict[str, Any]) -> None:
        """Publish one message to a durable queue, confirmed; raises when the broker refuses."""
        with self._side_lock:
            self.side_publisher.send(queue, body)

    def age_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_aging >= self.settings.aging_seconds:
            self._last_aging = now
            store_ops.age_waiting_tasks(self.store, self.settings.bands,
                                        self.settings.aging_seconds)

    def republish_stale(self) -> None:
        """Publish again the messages of tasks dispatched long ago that the queue no longer holds.

        A message can vanish (a queue deleted by hand, a broker that lost its disk); a message
        still waiting for a worker must not be doubled, so queues holding at least as many
        messages as they should are left alone.
        """
        if not self.leading():
            return
        stale = store_ops.stale_dispatches(self.store, self.settings.redispatch_seconds)
        if not stale:
            return
        expected = store_ops.dispatched_counts(self.store)
        resend: list[Release] = []
        with self._lock:
            for (pool, band), count in expected.items():
                depth = self.publisher.queue_depth(queue_name(pool, band))
                if depth is not None and depth < count:
                    missing = [r for r in stale if (r.pool, r.band) == (pool, band)]
                    resend.extend(missing[:count - depth])
            if resend:
                log.warning("publishing %d lost task messages again", len(resend))
                self.publisher.publish(resend)
        store_ops.touch_dispatched(self.store, stale)
