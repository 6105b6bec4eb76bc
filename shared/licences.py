"""Licence names, what a task asks for, and the counts read from FlexLM and RLM status output.

A licence is a named pool of counted tokens shared by the whole studio ("houdini", "nuke_i"). A task
asks for some with `parse_licence_needs`; the license service keeps the pools. Pools can follow a
licence server: `parse_lmstat` reads `lmutil lmstat -a` and `parse_rlmstat` reads `rlmutil rlmstat
-a` (or `-l`), each giving feature -> `LicenceCount`. Both parsers skip what they do not understand
(errors the server printed for one feature, uncounted licences, banners), so one odd line never
hides the other features' counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shared.errors import InvalidSpec

LICENCE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
"""A pool's name: a letter or digit, then up to 63 letters, digits or `_.+-`."""

_NAME_RULE = "a letter or digit, then up to 63 letters, digits or _.+-"


def check_licence_name(name: object, where: str) -> str:
    """name, if it is a valid licence name; else InvalidSpec naming `where` and the value."""
    if not isinstance(name, str) or not LICENCE_NAME.fullmatch(name):
        raise InvalidSpec(f"{where}: {name!r} is not a licence name ({_NAME_RULE})")
    return name


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidSpec(f"{where}: must be a whole number >= 1, got {value!r}")
    return value


def parse_licence_needs(value: object, where: str) -> dict[str, int]:
    """Licence name -> how many, from `{"houdini": 1, "karma": 2}` or `["houdini", "karma"]`.

    In a list each name counts once, and a name listed twice counts twice. Anything else is refused
    with an InvalidSpec whose message starts with the path of the bad part, such as
    `layers[0].licences.houdini: must be a whole number >= 1, got 0`.
    """
    needs: dict[str, int] = {}
    if isinstance(value, Mapping):
        for name, count in value.items():
            check_licence_name(name, where)
            needs[name] = _count(count, f"{where}.{name}")
    elif isinstance(value, list):
        for position, name in enumerate(value):
            check_licence_name(name, f"{where}[{position}]")
            needs[name] = needs.get(name, 0) + 1
    else:
        raise InvalidSpec(f"{where}: expected an object of licence name -> count or a list of "
                          f"licence names, got {type(value).__name__}")
    return dict(sorted(needs.items()))


@dataclass(frozen=True)
class LicenceCount:
    """One feature on a licence server: how many licences it issues and how many are checked out."""

    issued: int
    in_use: int


def _add(counts: dict[str, LicenceCount], feature: str, issued: int, in_use: int) -> None:
    # The same feature served by several servers (or in several versions) adds up.
    before = counts.get(feature, LicenceCount(0, 0))
    counts[feature] = LicenceCount(before.issued + issued, before.in_use + in_use)


_LMSTAT_USERS: Final = re.compile(
    r"^\s*Users of (?P<feature>[^\s:]+):\s*\(\s*Total of (?P<issued>\d+) licenses? issued;"
    r"\s*Total of (?P<in_use>\d+) licenses? in use\s*\)", re.IGNORECASE)


def parse_lmstat(text: str) -> dict[str, LicenceCount]:
    """Feature -> counts from FlexLM's `lmutil lmstat -a` (or `-f`) output.

    Reads the `Users of FEATURE:  (Total of N licenses issued;  Total of M licenses in use)` lines.
    A feature the server reports as uncounted or with an error (`Users of x:  (Error: ...)`) has
    no count to read and is left out.
    """
    counts: dict[str, LicenceCount] = {}
    for line in text.splitlines():
        match = _LMSTAT_USERS.match(line)
        if match is not None:
            _add(counts, match["feature"], int(match["issued"]), int(match["in_use"]))
    return counts


# `nuke_i v2024.0331` or `nuke_i v2024.0331, pool: 3`, then on the next line (or the same one)
# `count: 5, # reservations: 0, inuse: 2, exp: 31-dec-2026`.
_RLM_PRODUCT: Final = re.compile(r"^\s*(?P<feature>[^\s:,]+) v[0-9][0-9A-Za-z.]*(?:,\s*pool:\s*\d+)?"
                                 r"(?P<rest>\s.*)?$")
_RLM_COUNTS: Final = re.compile(r"^\s*count:\s*(?P<issued>\d+),.*?\binuse:\s*(?P<in_use>\d+)")


def parse_rlmstat(text: str) -> dict[str, LicenceCount]:
    """Feature -> counts from the license pool status that `rlmutil rlmstat -a` (or `-l`) prints.

    Each pool is a `PRODUCT vVERSION` line followed by its `count: N, # reservations: R, inuse: M`
    line; several versions (or pools) of one product add up. Uncounted or token-based pools print
    no such count line and are left out. The usage section (`product vX: user@host 1/0 at ...`)
    is not read: it repeats what the counts already say.
    """
    counts: dict[str, LicenceCount] = {}
    product: str | None = None
    for line in text.splitlines():
        counted = _RLM_COUNTS.match(line)
        if counted is not None:
            if product is not None:
                _add(counts, product, int(counted["issued"]), int(counted["in_use"]))
            product = None
            continue
        named = _RLM_PRODUCT.match(line)
        if named is not None and "@" not in line:
            product = named["feature"]
            rest = _RLM_COUNTS.match(named["rest"] or "")
            if rest is not None:  # the counts printed on the product's own line
                _add(counts, product, int(rest["issued"]), int(rest["in_use"]))
                product = None
        elif line.strip():
            product = None  # anything else between a product and its counts: they are not its
    return counts
