"""What a host has (cores, memory, GPUs, custom counts) and a ledger of what is reserved on it."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import psutil

from shared.errors import InvalidSpec

_MEGABYTES_PER_UNIT = {"K": Fraction(1, 1024), "M": Fraction(1), "G": Fraction(1024),
                       "T": Fraction(1024 ** 2)}
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:([KMGT])(?:B|iB)?)?\s*", re.IGNORECASE)


def parse_size(text: str | int, *, field_path: str = "memory") -> int:
    """Megabytes in a size such as 512M, 64G, 1.5T, 64GiB or 2048 (a plain number is megabytes)."""
    match = None
    if isinstance(text, (str, int)) and not isinstance(text, bool):
        match = _SIZE_PATTERN.fullmatch(str(text))
    if match is None:
        raise InvalidSpec(f"{field_path}: {text!r} is not a size like 512M, 64G or 1.5T")
    number, unit = match.groups()
    # Rounded up: a request for 512K still needs a whole megabyte, never none.
    return math.ceil(Fraction(number) * _MEGABYTES_PER_UNIT[(unit or "M").upper()])


def format_size(mb: int) -> str:
    """mb in the largest of T, G or M that is exact to two decimals: 65536 is 64G, 1536 is 1.5G."""
    if mb < 0:
        raise ValueError(f"a size cannot be negative, got {mb}")
    for unit in ("T", "G"):
        amount = Fraction(mb) / _MEGABYTES_PER_UNIT[unit]
        # Only exact renderings, so that parse_size(format_size(mb)) gives mb back.
        if amount >= 1 and (amount * 100).denominator == 1:
            return f"{float(amount):.2f}".rstrip("0").rstrip(".") + unit
    return f"{mb}M"


def replaced_totals_note(host: str, reply: Mapping[str, Any]) -> str | None:
    """What to tell a person whose report of a host's totals replaced different ones (the
    negotiator's `report_host` reply names them under `replaced`), or None when nothing changed."""
    before = reply.get("replaced")
    if not before:
        return None
    after = reply.get("totals") or {}

    def amounts(totals: Mapping[str, Any]) -> str:
        return (f"{float(totals.get('cores', 0)):g} cores, "
                f"{format_size(int(totals.get('memory_mb', 0)))}, {totals.get('gpus', 0)} GPUs")

    return (f"host {host} had been reported with {amounts(before)} (by another pool or worker "
            f"on it, or an earlier run); now {amounts(after)} hold for every worker on {host}. "
            "Give every pool and worker on one host the same --cores/--memory/--gpus.")


def _exact(amount: float) -> float:
    # Fractional amounts are kept to thousandths so that sums and differences land on the same
    # float whatever order reservations come and go in: a ledger must never drift from its totals.
    return float(round(amount, 3))


@dataclass(frozen=True)
class Resources:
    """Amounts of each resource: a host's totals, a request, a grant or what is still free."""

    cores: float
    memory_mb: int
    gpus: int = 0
    custom: Mapping[str, float] = field(default_factory=dict)
    """Counts a site names itself, such as licences; a name that is missing means zero."""

    def __post_init__(self) -> None:
        custom = {name: _exact(amount) for name, amount in sorted(self.custom.items())}
        # Zero entries are dropped so that equal amounts compare equal however they were reached.
        object.__setattr__(self, "custom",
                           MappingProxyType({name: amount for name, amount in custom.items()
                                             if amount}))
        object.__setattr__(self, "cores", _exact(self.cores))
        amounts = [self.cores, self.memory_mb, self.gpus, *custom.values()]
        if not all(math.isfinite(amount) and amount >= 0 for amount in amounts):
            raise ValueError(f"resources must be finite and not negative: {self}")

    def __hash__(self) -> int:
        return hash((self.cores, self.memory_mb, self.gpus, frozenset(self.custom.items())))

    def fits_in(self, other: Resources) -> bool:
        """Whether every amount here is at most the same amount in other."""
        return (self.cores <= other.cores and self.memory_mb <= other.memory_mb
                and self.gpus <= other.gpus
                and all(amount <= other.custom.get(name, 0.0)
                        for name, amount in self.custom.items()))

    def __add__(self, other: Resources) -> Resources:
        return _combine(self, other, operator.add)

    def __sub__(self, other: Resources) -> Resources:
        if not other.fits_in(self):
            raise ValueError(f"taking {other} from {self} would go below zero")
        return _combine(self, other, operator.sub)


NO_RESOURCES = Resources(cores=0, memory_mb=0)


def _combine(first: Resources, second: Resources,
             operation: Callable[[Any, Any], Any]) -> Resources:
    names = first.custom.keys() | second.custom.keys()
    return Resources(
        cores=operation(first.cores, second.cores),
        memory_mb=operation(first.memory_mb, second.memory_mb),
        gpus=operation(first.gpus, second.gpus),
        custom={name: operation(first.custom.get(name, 0.0), second.custom.get(name, 0.0))
                for name in names},
    )


def _clamped_difference(have: Any, taken: Any) -> Any:
    return max(have - taken, 0)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU of a host, as NVML numbers it."""

    index: int
    model: str
    memory_mb: int


@dataclass(frozen=True)
class HostTotals:
    """Everything a host has to give, as it reported in."""

    host: str
    resources: Resources
    gpus: tuple[GpuInfo, ...] = ()

    def __post_init__(self) -> None:
        indices = {gpu.index for gpu in self.gpus}
        if len(indices) != len(self.gpus) or len(indices) != self.resources.gpus:
            raise ValueError(f"{self.host}: resources count {self.resources.gpus} GPUs but "
                             f"{len(self.gpus)} are listed, {len(indices)} of them distinct")


def detect_host_totals(host: str, cores: float | None = None, memory: str | None = None,
                       gpus: int | None = None) -> HostTotals:
    """What this machine has, from psutil and NVML; each override replaces what is detected."""
    if gpus is None:
        gpu_list = _detect_gpus()
    else:
        gpu_list = tuple(GpuInfo(index, "declared", 0) for index in range(gpus))
    resources = Resources(
        # psutil answers None when the count cannot be read; one core is the safe assumption.
        cores=float(psutil.cpu_count(logical=True) or 1) if cores is None else cores,
        memory_mb=(psutil.virtual_memory().total // 2 ** 20 if memory is None
                   else parse_size(memory)),
        gpus=len(gpu_list) if gpus is None else gpus,
    )
    return HostTotals(host, resources, gpu_list)


def _detect_gpus() -> tuple[GpuInfo, ...]:
    # NVML is optional: a host without the package or without an NVIDIA driver has no GPUs.
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return ()
    try:
        found: list[GpuInfo] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            model = pynvml.nvmlDeviceGetName(handle)
            found.append(GpuInfo(
                index=index,
                # Older nvidia-ml-py releases return bytes here.
                model=model.decode() if isinstance(model, bytes) else str(model),
                memory_mb=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // 2 ** 20,
            ))
        return tuple(found)
    except pynvml.NVMLError:
        # A driver that fails part way cannot be trusted with work: offer no GPUs rather than some.
        return ()
    finally:
        pynvml.nvmlShutdown()


def grant(minimum: Resources, preferred: Resources | None,
          available: Resources) -> Resources | None:
    """What to give a request (Lifeblood's rule): per resource min(available, max(preferred,
    minimum)); None when the minimum does not fit in what is available."""
    if not minimum.fits_in(available):
        return None
    wanted = minimum if preferred is None else _combine(preferred, minimum, max)
    return _combine(available, wanted, min)


@dataclass(frozen=True)
class Reservation:
    """What one holder (such as "task 12 attempt 3") has on one host, GPUs by index."""

    id: str
    host: str
    resources: Resources
    gpu_indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        distinct = set(self.gpu_indices)
        if len(distinct) != len(self.gpu_indices) or len(distinct) != self.resources.gpus:
            raise ValueError(f"{self.id}: holds {self.resources.gpus} GPUs but lists "
                             f"indices {self.gpu_indices}")


class HostLedger:
    """Per host totals and every reservation against them, so no host is promised more than it has.

    Each method reads and then writes without yielding, so the owner must call it from one
    thread (a nameko service's green threads qualify).
    """

    def __init__(self) -> None:
        self._totals: dict[str, HostTotals] = {}
        self._reservations: dict[str, Reservation] = {}

    @classmethod
    def rebuild(cls, totals: Iterable[HostTotals],
                reservations: Iterable[Reservation]) -> HostLedger:
        """A ledger restored from what workers report after a restart.

        Reported reservations are kept even when they no longer fit: that work is already
        running, so the host simply takes no new reservations until enough is released.
        """
        ledger = cls()
        for host_totals in totals:
            ledger.set_totals(host_totals)
        for reservation in reservations:
            ledger._reservations[reservation.id] = reservation
        return ledger

    def set_totals(self, totals: HostTotals) -> None:
        """Record what a host has; lowered below what is reserved, the host takes no new work."""
        self._totals[totals.host] = totals

    def reservations(self, host: str) -> tuple[Reservation, ...]:
        """The live reservations on host, oldest first."""
        return tuple(held for held in self._reservations.values() if held.host == host)

    def free(self, host: str) -> Resources:
        """Totals minus reservations, never below zero; a host that never reported has nothing."""
        totals = self._totals.get(host)
        if totals is None:
            return NO_RESOURCES
        return _combine(totals.resources, self._reserved(host), _clamped_difference)

    def reserve(self, reservation_id: str, host: str, minimum: Resources,
                preferred: Resources | None = None) -> Reservation | None:
        """Hold at least minimum and up to preferred on host, all or nothing; None if it cannot.

        An id already held gets its existing reservation back unchanged, so a retried request
        never takes twice.
        """
        existing = self._reservations.get(reservation_id)
        if existing is not None:
            return existing
        totals = self._totals.get(host)
        if totals is None or not self._reserved(host).fits_in(totals.resources):
            # Totals were lowered under running work: wait until releases bring it back within.
            return None
        amounts = grant(minimum, preferred, self.free(host))
        if amounts is None:
            return None
        held = {index for other in self.reservations(host) for index in other.gpu_indices}
        free_indices = sorted(gpu.index for gpu in totals.gpus if gpu.index not in held)
        reservation = Reservation(reservation_id, host, amounts,
                                  tuple(free_indices[:amounts.gpus]))
        self._reservations[reservation_id] = reservation
        return reservation

    def release(self, reservation_id: str) -> Reservation | None:
        """Give back what reservation_id holds; an id released already or never held is a no-op."""
        return self._reservations.pop(reservation_id, None)

    def _reserved(self, host: str) -> Resources:
        return sum((held.resources for held in self.reservations(host)), NO_RESOURCES)
