"""The account commands' own parsing: durations for --ttl and --since."""

import pytest

from services.cli.accounts import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900),
                                               ("12h", 43200), ("30d", 2592000), ("2w", 1209600),
                                               ("1.5h", 5400)])
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text, "--ttl") == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "12x", "h", "1e9"])
def test_a_bad_duration_names_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="^--ttl: "):
        parse_duration(text, "--ttl")
