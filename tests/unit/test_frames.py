"""Frame ranges: every frame renders exactly once, in the order given, with argv filled per chunk."""

from __future__ import annotations

from itertools import chain, pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.errors import InvalidSpec
from shared.frames import MAX_FRAMES, Chunk, chunk_frames, parse_frame_range, substitute

BAND_WIDTH = 300
"""Each generated item draws its frames from its own band of this many, so items never overlap."""


def _through(first: int, end: int, step: int) -> list[int]:
    """The frames from first towards end by step, end included when the step lands on it."""
    return list(range(first, end + (1 if step > 0 else -1), step))


@st.composite
def frame_ranges(draw: st.DrawFn, reversed_only: bool = False) -> tuple[str, list[int]]:
    """Text of one to six non-overlapping items and the frames it names, worked out separately."""
    bands = draw(st.permutations(range(-4, 4)))
    texts: list[str] = []
    expected: list[int] = []
    for band in bands[:draw(st.integers(1, 6))]:
        numbers = st.integers(band * BAND_WIDTH, (band + 1) * BAND_WIDTH - 1)
        first, end = draw(numbers), draw(numbers)
        if reversed_only:
            first, end = max(first, end), min(first, end)
        form = draw(st.sampled_from(["range", "stepped"] if reversed_only
                                    else ["single", "range", "stepped"]))
        if form == "single":
            texts.append(str(first))
            expected.append(first)
        elif form == "range":
            texts.append(f"{first}-{end}")
            expected += _through(first, end, 1 if end >= first else -1)
        else:
            size = draw(st.integers(1, 40))
            step = size if end >= first else -size
            texts.append(f"{first}-{end}x{step}")
            expected += _through(first, end, step)
    return draw(st.sampled_from([",", ", ", " , "])).join(texts), expected


def _assert_chunks_render_every_frame_once(frames: list[int], size: int) -> None:
    chunks = chunk_frames(frames, size)
    assert list(chain.from_iterable(chunk.frames for chunk in chunks)) == frames
    assert all(len(chunk.frames) == size for chunk in chunks[:-1])
    assert all(1 <= len(chunk.frames) <= size for chunk in chunks)


# Properties over random ranges.

@given(frame_ranges())
def test_parsed_frames_are_the_items_expanded_in_the_order_given(case: tuple[str, list[int]]) -> None:
    text, expected = case
    assert parse_frame_range(text) == expected


@given(frame_ranges(), st.integers(1, 100))
def test_every_frame_lands_in_exactly_one_chunk_in_frame_order(
        case: tuple[str, list[int]], size: int) -> None:
    _assert_chunks_render_every_frame_once(parse_frame_range(case[0]), size)


@given(frame_ranges(reversed_only=True), st.integers(2, 100))
def test_reversed_range_with_uneven_chunks_renders_every_frame_once(
        case: tuple[str, list[int]], size: int) -> None:
    frames = parse_frame_range(case[0])
    # A short last chunk is where an off-by-one would drop or repeat frames.
    assume(len(frames) % size != 0)
    _assert_chunks_render_every_frame_once(frames, size)


@given(frame_ranges(), st.integers(1, 100))
def test_chunk_start_end_and_step_describe_its_frames_when_regular(
        case: tuple[str, list[int]], size: int) -> None:
    for chunk in chunk_frames(parse_frame_range(case[0]), size):
        assert (chunk.start, chunk.end) == (chunk.frames[0], chunk.frames[-1])
        if chunk.regular:
            assert list(chunk.frames) == _through(chunk.start, chunk.end, chunk.step)
        else:
            differences = {b - a for a, b in pairwise(chunk.frames)}
            assert len(differences) > 1 and chunk.step == 1


@given(frame_ranges(), st.data())
def test_a_frame_listed_twice_is_refused_naming_the_frame(
        case: tuple[str, list[int]], data: st.DataObject) -> None:
    text, expected = case
    repeated = data.draw(st.sampled_from(expected))
    with pytest.raises(InvalidSpec, match=rf": frame {repeated} is already in '"):
        parse_frame_range(f"{text},{repeated}")


@settings(deadline=None)  # text like `0-999999` is a valid range of a million frames
@given(st.text(alphabet="0123456789-x, .", max_size=30))
def test_any_text_either_parses_to_distinct_frames_or_is_refused_as_invalid_spec(text: str) -> None:
    try:
        frames = parse_frame_range(text)
    except InvalidSpec as refused:
        assert str(refused).startswith("frames: ")
    else:
        assert frames and len(set(frames)) == len(frames)


# Each accepted form.

@pytest.mark.parametrize(("text", "frames"), [
    ("7", [7]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-10x2", [1, 3, 5, 7, 9]),
    ("1-10x4", [1, 5, 9]),
    ("1,5,10-12", [1, 5, 10, 11, 12]),
    ("5-1", [5, 4, 3, 2, 1]),
    ("10-1x-3", [10, 7, 4, 1]),
    ("-5--1", [-5, -4, -3, -2, -1]),
    ("-2-1", [-2, -1, 0, 1]),
    ("2--1", [2, 1, 0, -1]),
    ("5-5x-3", [5]),
    (" 1 - 3 , 20-16 x -2 ", [1, 2, 3, 20, 18, 16]),
    ("30,10-12,1", [30, 10, 11, 12, 1]),
])
def test_accepted_form_expands_to_its_frames_in_the_order_given(text: str, frames: list[int]) -> None:
    assert parse_frame_range(text) == frames


def test_reversed_range_with_explicit_minus_one_step_runs_from_first_to_last() -> None:
    frames = parse_frame_range("240-1x-1")
    assert frames == list(range(240, 0, -1))


def test_range_of_exactly_the_frame_limit_is_accepted() -> None:
    assert len(parse_frame_range(f"1-{MAX_FRAMES}")) == MAX_FRAMES


# Each refusal, with the message a user reads.

@pytest.mark.parametrize(("text", "message"), [
    ("10-1x2", "frames: '10-1x2': step 2 goes away from 1"),
    ("1-10x-1", "frames: '1-10x-1': step -1 goes away from 10"),
    ("1-10x0", "frames: '1-10x0': step must not be 0"),
    ("1-5,3", "frames: '3': frame 3 is already in '1-5'"),
    ("1-10x2,20,9-7", "frames: '9-7': frame 9 is already in '1-10x2'"),
    ("1-", "frames: '1-': expected N, A-B or A-BxS"),
    ("a-b", "frames: 'a-b': expected N, A-B or A-BxS"),
    ("1x2", "frames: '1x2': expected N, A-B or A-BxS"),
    ("1-2-3", "frames: '1-2-3': expected N, A-B or A-BxS"),
    ("1.5", "frames: '1.5': expected N, A-B or A-BxS"),
    ("1 2", "frames: '1 2': expected N, A-B or A-BxS"),
    ("\u0661-\u0663", "frames: '\u0661-\u0663': expected N, A-B or A-BxS"),
    ("", "frames: is empty"),
    ("   ", "frames: is empty"),
    ("1,,2", "frames: '1,,2': item 2 is empty"),
    ("1,", "frames: '1,': item 2 is empty"),
    ("1-1000001", "frames: '1-1000001': makes 1000001 frames, more than the limit of 1000000"),
    ("1-600000,700001-1300000",
     "frames: '700001-1300000': makes 1200000 frames, more than the limit of 1000000"),
    ("0-999999999999999999999",
     ("frames: '0-999999999999999999999': makes 1000000000000000000000 frames, more than the "
      "limit of 1000000")),
    ("9" * 5000, f"frames: '{'9' * 5000}': a number is too long"),
])
def test_bad_frame_range_is_refused_quoting_the_item(text: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_frame_range(text)
    assert str(refused.value) == message


# Chunking.

@pytest.mark.parametrize("size", [0, -3])
def test_chunk_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(InvalidSpec) as refused:
        chunk_frames([1, 2, 3], size)
    assert str(refused.value) == f"chunk: must be at least 1, got {size}"


def test_stepped_frames_chunk_with_their_step() -> None:
    chunks = chunk_frames(parse_frame_range("1-20x3"), 3)
    assert [(chunk.start, chunk.end, chunk.step) for chunk in chunks] == [
        (1, 7, 3), (10, 16, 3), (19, 19, 1)]
    assert all(chunk.regular for chunk in chunks)


def test_reversed_frames_chunk_with_a_negative_step() -> None:
    chunks = chunk_frames(parse_frame_range("10-1x-3"), 2)
    assert [(chunk.frames, chunk.step) for chunk in chunks] == [((10, 7), -3), ((4, 1), -3)]


def test_irregular_chunk_is_marked_and_lists_exactly_its_frames() -> None:
    (chunk,) = chunk_frames(parse_frame_range("1,5,10"), 5)
    assert chunk.frames == (1, 5, 10)
    assert (chunk.start, chunk.end, chunk.step, chunk.regular) == (1, 10, 1, False)


def test_chunk_of_one_frame_is_regular_with_step_one() -> None:
    assert chunk_frames([42], 10) == [Chunk((42,))]
    assert (Chunk((42,)).step, Chunk((42,)).regular) == (1, True)


def test_chunk_with_a_repeated_frame_is_not_regular() -> None:
    # Step 0 would be passed to a renderer as a loop that never advances.
    assert (Chunk((3, 3)).regular, Chunk((3, 3)).step) == (False, 1)


def test_no_frames_make_no_chunks() -> None:
    assert chunk_frames([], 4) == []


# Argv substitution.

def test_range_tokens_are_filled_from_the_chunk() -> None:
    argv = ["render", "-s", "{start}", "-e", "{end}", "-b", "{step}", "-f", "{frame}"]
    assert substitute(argv, Chunk((10, 12, 14))) == [
        "render", "-s", "10", "-e", "14", "-b", "2", "-f", "10"]


def test_frames_token_lists_every_frame_of_an_irregular_chunk() -> None:
    assert substitute(["--frames={frames}"], Chunk((1, 5, 10))) == ["--frames=1,5,10"]


def test_several_tokens_in_one_item_are_all_filled() -> None:
    assert substitute(["{start}-{end}x{step}"], Chunk((20, 15, 10))) == ["20-10x-5"]


@pytest.mark.parametrize(("item", "filled"), [
    ("shot.{frame:04d}.exr", "shot.0007.exr"),
    ("{start:03d}_{end:06d}", "007_000009"),
    ("{frame:4d}", "   7"),
    ("{frame:02d}", "07"),
    ("{frame:01d}", "7"),
])
def test_frame_numbers_are_padded_to_the_width_asked(item: str, filled: str) -> None:
    assert substitute([item], Chunk((7, 8, 9))) == [filled]


def test_padding_of_a_negative_frame_counts_the_sign_in_the_width() -> None:
    assert substitute(["{frame:04d}"], Chunk((-5,))) == ["-005"]


@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=5, unique=True),
       st.integers(1, 12))
def test_padded_frame_reads_back_as_the_first_frame(frames: list[int], width: int) -> None:
    (filled,) = substitute([f"{{frame:0{width}d}}"], Chunk(tuple(frames)))
    assert int(filled) == frames[0] and len(filled) >= width


@pytest.mark.parametrize("item", [
    "{other}", "{name}.{ext}", "{{", "}}", "{", "}", "{}", "{ frame }", "{FRAME}",
    "{frame:x}", "{frame:0d}", "{frame:100d}", "{step:02d}", "{frames:04d}", "{frame!r}",
    "${HOME}", "a{b}c{{d}}",
])
def test_other_braces_are_left_untouched(item: str) -> None:
    assert substitute([item], Chunk((1, 2))) == [item]


def test_doubled_braces_are_not_an_escape_for_a_token() -> None:
    assert substitute(["{{frame}}"], Chunk((3,))) == ["{3}"]


def test_argv_items_with_spaces_stay_single_items() -> None:
    argv = ["my renderer", "--out", "renders/shot a/{frame:03d}.exr", "echo {frame}; rm -rf /"]
    assert substitute(argv, Chunk((4,))) == [
        "my renderer", "--out", "renders/shot a/004.exr", "echo 4; rm -rf /"]
