"""Frame ranges of render layers: parsing them, cutting them into chunks, and filling argv tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import pairwise

from shared.errors import InvalidSpec

MAX_FRAMES = 1_000_000
MAX_FRAME_NUMBER = 2**31 - 1
"""Most frames one frame range may expand to: far beyond any shot, small enough to hold in memory."""

# `N`, `A-B` or `A-BxS`; each number may be negative, so `-5--1` reads as -5 to -1.
_ITEM = re.compile(r"(-?[0-9]+)(?:\s*-\s*(-?[0-9]+)(?:\s*x\s*(-?[0-9]+))?)?", re.ASCII)

# Only these five tokens are filled; anything else in braces is the program's own business.
# Padding applies to single frame numbers only, with widths of 1 to 99 so a typo cannot
# ask for a gigabyte of zeros.
_TOKEN = re.compile(r"\{(?:(frame|start|end)(?::(0?[1-9][0-9]?)d)?|(step|frames))\}", re.ASCII)


@dataclass(frozen=True)
class Chunk:
    """The frames one task renders, in order; start, end and step describe them when `regular`.

    When the frames have no constant difference (1,5,10, say), `regular` is False, `step` is 1
    and only `frames` says exactly what the chunk holds.
    """

    frames: tuple[int, ...]
    start: int = field(init=False)
    end: int = field(init=False)
    step: int = field(init=False)
    regular: bool = field(init=False)

    def __post_init__(self) -> None:
        frames = tuple(self.frames)
        if not frames:
            raise ValueError("a chunk holds at least one frame")
        steps = {later - earlier for earlier, later in pairwise(frames)}
        # A repeated frame would give step 0, which no renderer can loop over: not regular.
        regular = len(steps) <= 1 and 0 not in steps
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "start", frames[0])
        object.__setattr__(self, "end", frames[-1])
        object.__setattr__(self, "step", steps.pop() if regular and steps else 1)
        object.__setattr__(self, "regular", regular)


def parse_frame_range(text: str) -> list[int]:
    """Expand text such as `1-240x2, 300` into frames in the order given, or raise InvalidSpec.

    Items are `N`, `A-B` (reversed, stepping -1, when A > B) or `A-BxS`, whose step must point
    from A towards B. Every frame may appear once only, and there may be at most MAX_FRAMES.
    """
    if not text.strip():
        raise InvalidSpec("frames: is empty")
    frames: list[int] = []
    seen: set[int] = set()
    earlier_items: list[tuple[str, range]] = []
    for position, raw_item in enumerate(text.split(","), start=1):
        item = raw_item.strip()
        if not item:
            raise InvalidSpec(f"frames: {text.strip()!r}: item {position} is empty")
        first, last, step = _parse_item(item)
        # Counted before expanding, so `1-999999999999` is refused without building it.
        total = len(frames) + (last - first) // step + 1
        if total > MAX_FRAMES:
            raise InvalidSpec(f"frames: {item!r}: makes {total} frames, more than the limit "
                              f"of {MAX_FRAMES}")
        if max(abs(first), abs(last)) > MAX_FRAME_NUMBER:
            raise InvalidSpec(f"frames: {item!r}: past the largest frame number, "
                              f"{MAX_FRAME_NUMBER}")
        span = range(first, last + step, step)
        for frame in span:
            if frame in seen:
                earlier = next(earlier_item for earlier_item, earlier_span in earlier_items
                               if frame in earlier_span)
                raise InvalidSpec(f"frames: {item!r}: frame {frame} is already in {earlier!r}")
            seen.add(frame)
            frames.append(frame)
        earlier_items.append((item, span))
    return frames


def count_frames(text: str) -> int:
    """How many frames `text` names, without expanding it (a repeated frame counts twice; the
    full parse refuses it)."""
    total = 0
    for raw_item in text.split(","):
        if raw_item.strip():
            first, last, step = _parse_item(raw_item.strip())
            total += (last - first) // step + 1
    return total


def _parse_item(item: str) -> tuple[int, int, int]:
    """Read one item as (first, last frame actually reached, step)."""
    match = _ITEM.fullmatch(item)
    if match is None:
        raise InvalidSpec(f"frames: {item!r}: expected N, A-B or A-BxS")
    first_text, end_text, step_text = match.groups()
    first = _number(item, first_text)
    if end_text is None:
        return first, first, 1
    end = _number(item, end_text)
    step = _number(item, step_text) if step_text is not None else (1 if end >= first else -1)
    if step == 0:
        raise InvalidSpec(f"frames: {item!r}: step must not be 0")
    if (end - first) * step < 0:
        raise InvalidSpec(f"frames: {item!r}: step {step} goes away from {end}")
    # A step that overshoots stops short of the end: `1-10x4` is 1, 5, 9.
    last = first + (end - first) // step * step
    return first, last, step


def _number(item: str, digits: str) -> int:
    try:
        return int(digits)
    except ValueError:
        # Python refuses to read integers of thousands of digits.
        raise InvalidSpec(f"frames: {item!r}: a number is too long") from None


def chunk_frames(frames: list[int], chunk: int) -> list[Chunk]:
    """Cut frames into consecutive chunks of `chunk` frames, in order; the last may be shorter."""
    if chunk < 1:
        raise InvalidSpec(f"chunk: must be at least 1, got {chunk}")
    return [Chunk(tuple(frames[index:index + chunk])) for index in range(0, len(frames), chunk)]


def substitute(argv: list[str], chunk: Chunk) -> list[str]:
    """Fill {frame}, {start}, {end}, {step} and {frames} in each argv item; nothing else changes.

    {frame}, {start} and {end} take a zero-padding width, as in {frame:04d}. There is no escape:
    `{{frame}}` becomes `{1}`, and other braces, `{name}` or `{{` alone, are left as they are.
    """
    numbers = {"frame": chunk.start, "start": chunk.start, "end": chunk.end}

    def fill(match: re.Match[str]) -> str:
        number_name, width, other_name = match.groups()
        if other_name == "step":
            return str(chunk.step)
        if other_name == "frames":
            return ",".join(str(frame) for frame in chunk.frames)
        number = numbers[number_name]
        return format(number, f"{width}d") if width else str(number)

    return [_TOKEN.sub(fill, item) for item in argv]
