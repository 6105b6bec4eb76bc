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
DEAD_REPORTS_QUEUE = "corral.reports.dead"
"""Finish reports the scheduler could not apply, kept for a person to look at."""
"""Durable queue of workers' finish reports: published with confirms, applied by the scheduler."""

HEARTBEATS_QUEUE = "corral.heartbeats"
"""Durable queue of workers' heartbeats (shared.heartbeat.Heartbeat): published with confirms and
no reply, applied by the registry in batches."""
HEARTBEATS_QUEUE_ARGUMENTS = {"x-max-length": 100_000, "x-overflow": "drop-head"}
"""What the heartbeat queue is declared with, by workers and the registry alike: a registry down
for long drops the oldest heartbeats (each worker's newest are what count) rather than fill the
broker's memory."""


def queue_name(pool: str, band: str) -> str:
    """The durable RabbitMQ queue for one pool and band, e.g. corral.cpu.normal."""
    return f"corral.{pool}.{band}"
