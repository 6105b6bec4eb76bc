"""Priority bands (pyLoadBalancer's minP/maxP ranges): parsing, lookup, and queue names."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError


@dataclass(frozen=True, order=True)
class Band:
    """A named, inclusive range of priorities; workers serve bands, not single priorities."""

    low: int
    high: int
    name: str

    def contains(self, priority: int) -> bool:
        return self.low <= priority <= self.high


def parse_bands(value: Any) -> tuple[Band, ...]:
    """Accept {"name": [low, high]} or [Band...]; refuse overlaps and empty ranges."""
    if isinstance(value, (list, tuple)) and all(isinstance(b, Band) for b in value):
        bands = list(value)
    elif isinstance(value, dict) and value:
        bands = []
        for name, bounds in value.items():
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                    or not all(isinstance(b, int) for b in bounds)):
                raise ConfigError(f"band {name!r} must be [low, high] integers, got {bounds!r}")
            low, high = bounds
            if low > high:
                raise ConfigError(f"band {name!r}: low {low} is above high {high}")
            bands.append(Band(low=low, high=high, name=str(name)))
    else:
        raise ConfigError("bands must be a mapping of name to [low, high]")
    bands.sort()
    for before, after in itertools.pairwise(bands):
        if after.low <= before.high:
            raise ConfigError(f"bands {before.name!r} and {after.name!r} overlap")
    return tuple(bands)


def band_for_priority(bands: Iterable[Band], priority: int) -> Band | None:
    """The band a priority falls in, or None when it is outside every band."""
    for band in bands:
        if band.contains(priority):
            return band
    return None


def band_rank(bands: Iterable[Band], name: str) -> int:
    """Higher bands rank higher; used to order release across bands."""
    for rank, band in enumerate(sorted(bands)):
        if band.name == name:
            return rank
    raise KeyError(name)


REPORTS_QUEUE = "corral.reports"
"""Durable queue of workers' finish reports: published with confirms, applied by the scheduler."""
DEAD_REPORTS_QUEUE = "corral.reports.dead"
"""Finish reports the scheduler could not apply, kept for a person to look at."""

QUORUM_DELIVERY_LIMIT = 1_000_000_000
"""`x-delivery-limit` of Corral's quorum queues: out of reach, so that no message is ever
dropped for its redeliveries. RabbitMQ counts a delivery whose consumer died holding it (a worker
killed by a crashing host) or put it back (a worker that found no room), and 4.x drops a message
at 20 by default: a crash-looping host would lose a healthy task's message. The scheduler's
database counts attempts, not the broker; a band message is only a hint to claim (3.10 takes no
-1 for "unlimited", so the limit is a number)."""


def queue_arguments(queue_type: str) -> dict[str, Any]:
    """The declare arguments of every durable shared queue of Corral's, for `queue_type`.

    Every part declaring a queue passes the same, or RabbitMQ refuses the declare. Classic queues
    take none (no `x-max-priority` either: each band is a queue of its own and the scheduler
    orders work within a band, so no message carries a priority); quorum queues are replicated
    over the cluster's nodes and never drop a message for its redeliveries.
    """
    if queue_type == "classic":
        return {}
    if queue_type == "quorum":
        return {"x-queue-type": "quorum", "x-delivery-limit": QUORUM_DELIVERY_LIMIT}
    raise ConfigError(f"queue type {queue_type!r} is neither classic nor quorum")


HEARTBEATS_QUEUE = "corral.heartbeats"
"""Durable queue of workers' heartbeats (shared.heartbeat.Heartbeat): published with confirms and
no reply, applied by the registry in batches."""
HEARTBEATS_QUEUE_ARGUMENTS = {"x-max-length": 100_000, "x-overflow": "drop-head"}
"""What the registry declares the heartbeat queue with, beside queue_arguments: a registry down
for long drops the oldest heartbeats (each worker's newest are what count) rather than fill the
broker's memory (quorum queues take both too)."""


def queue_name(pool: str, band: str) -> str:
    """The durable RabbitMQ queue for one pool and band, e.g. corral.cpu.normal."""
    return f"corral.{pool}.{band}"
