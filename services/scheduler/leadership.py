"""Which of a farm's scheduler instances acts: a lease row in the scheduler's database, on its clock.

Every instance answers RPC and takes finish reports: each is one transaction under the store's
writer lock (shared.db), so two instances are as safe as one for the database. Only the leader
runs what lives in memory and must run once: release passes and band publishing, lease expiry,
aging, republishing lost messages, ending tasks no host can take.

The margins, for a lease of L seconds (`leader_lease_seconds`):

- the leader renews every L/4 seconds;
- it counts its lease from the moment before it asked (its own monotonic clock), so it never
  believes in it longer than the database granted, and stops acting L/4 before even that
  (FENCE): room for the two clocks' drift and for a step already under way;
- a standby takes the lease only once the database's clock has passed its end, so the old
  leader has stopped at least L/4 before the new one starts. A leader killed with -9 is
  replaced within L + L/4 seconds; one on the same host whose process is gone, at once;
- a leader that stops cleanly gives its lease up, and a standby takes over at its next try.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Field

from services.scheduler.tables import SchedulerTable
from shared.db import Store

log = logging.getLogger(__name__)

LEASE = "scheduler"
"""The lease's row: one leader for the scheduler's database."""

FENCE = 0.25
"""The part of a lease at its end during which the leader no longer acts, and the part between
renewals."""


class LeaderLease(SchedulerTable, table=True):
    """Who leads, in which term, and until when by the database's clock."""

    __tablename__ = "leader_lease"

    name: str = Field(primary_key=True)
    holder: str        # host/pid/nonce of the instance holding it
    term: int          # one more at each change of holder (or a lapse of the same one)
    acquired_at: float
    expires_at: float


@dataclass(frozen=True)
class LeaseView:
    """The lease as one transaction left it, with the database's clock then."""

    holder: str
    term: int
    expires_at: float
    now: float


def instance_name(host: str = "") -> str:
    """This process's name as a holder: its host (or the name given it), its pid and a nonce."""
    return f"{host or socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def holder_gone(holder: str) -> bool:
    """Whether `holder` was a process on this host that is no longer alive (or had our pid: a
    process restarted in a container keeps its pid), so its lease need not be waited out.

    An instance given a name of its own (`instance_name`) is never judged so: its lease runs out."""
    host, _, rest = holder.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # our own pid under another name: an earlier life of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def hold(store: Store, holder: str, term: int | None, lease_seconds: float,
         gone: Callable[[str], bool] = holder_gone) -> LeaseView:
    """Renew `holder`'s lease of `term`, or take the lease if it is free, ours, or its holder is
    gone; the lease as it is now (led by `holder` or by another)."""
    with store.write() as session:
        now = store.now(session)
        row = session.get(LeaderLease, LEASE)
        if row is None:
            row = LeaderLease(name=LEASE, holder=holder, term=1, acquired_at=now,
                              expires_at=now + lease_seconds)
            session.add(row)
        elif row.holder == holder and row.term == term and row.expires_at > now:
            row.expires_at = now + lease_seconds
        elif row.holder == holder or row.expires_at <= now or gone(row.holder):
            # A new term: taken from another, or ours again after we stopped counting on it.
            row.holder, row.term = holder, row.term + 1
            row.acquired_at, row.expires_at = now, now + lease_seconds
        return LeaseView(row.holder, row.term, row.expires_at, now)


def resign(store: Store, holder: str) -> bool:
    """Give up `holder`'s lease now (a clean stop), so a standby need not wait it out."""
    with store.write() as session:
        row = session.get(LeaderLease, LEASE)
        if row is None or row.holder != holder:
            return False
        row.expires_at = store.now(session)
        return True


class Leadership:
    """This instance's part in the lease: whether it may act now, kept current by `tick`.

    `on_lead` runs at the start of each term, before the instance acts: the scheduler rebuilds
    its views and gives running tasks a lease of grace there, as at start-up.
    """

    def __init__(self, store: Store, lease_seconds: float, on_lead: Callable[[], None],
                 holder: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 gone: Callable[[str], bool] = holder_gone) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.on_lead = on_lead
        self.holder = holder or instance_name()
        self._clock = clock
        self._gone = gone
        self.term: int | None = None     # the term we act in, None while standing by
        self._until = 0.0                # our clock's time at which we stop acting
        self.seen: LeaseView | None = None

    @property
    def renew_every(self) -> float:
        return self.lease_seconds * FENCE

    def leading(self) -> bool:
        """Whether this instance may act now: it holds a term and its fence has not passed."""
        return self.term is not None and self._clock() < self._until

    def tick(self) -> None:
        """Renew our lease or try to take it; raises when the database cannot be asked (we go on
        leading until our fence, and no longer)."""
        asked = self._clock()
        current = self.term if self.leading() else None
        if self.term is not None and current is None:
            log.warning("scheduler instance %s: stopped acting, its leader lease of term %s "
                        "could not be renewed in time", self.holder, self.term)
            self.term = None
        view = hold(self.store, self.holder, current, self.lease_seconds, self._gone)
        self.seen = view
        if view.holder != self.holder:
            if current is not None:
                log.warning("scheduler instance %s: %s leads now (term %s); standing by",
                            self.holder, view.holder, view.term)
            self.term = None
            return
        if view.term != current:
            self.term = None  # not acting until the new term's views are rebuilt
            self.on_lead()
            log.warning("scheduler instance %s leads (term %s)", self.holder, view.term)
        self.term = view.term
        self._until = asked + self.lease_seconds * (1 - FENCE)

    def resign(self) -> None:
        """Stop acting and give the lease up (a clean stop)."""
        if self.term is not None:
            self.term = None
            resign(self.store, self.holder)

    def health(self) -> dict[str, object]:
        """This instance's role, and who leads as the last renewal saw it."""
        seen = self.seen
        return {"instance": self.holder,
                "role": "leader" if self.leading() else "standby",
                "leader": seen.holder if seen is not None and seen.expires_at > seen.now else None,
                "term": seen.term if seen is not None else None}
