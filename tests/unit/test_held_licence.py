"""What a worker's seat held for its life covers, and the --hold-licence option."""

import pytest

from services.worker.held_licence import HeldLicences, parse_hold_option
from shared.errors import InvalidSpec


def test_hold_option_reads_names_and_counts() -> None:
    assert parse_hold_option(["pixyz", "nuke=2", "pixyz"]) == {"nuke": 2, "pixyz": 2}


@pytest.mark.parametrize("bad", ["pixyz=0", "pixyz=x", "bad name"])
def test_a_bad_hold_option_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(InvalidSpec, match="--hold-licence"):
        parse_hold_option([bad])


def test_a_held_seat_covers_its_share_of_a_tasks_licences() -> None:
    held = HeldLicences({"pixyz": 1}, "w1", "node-a")
    assert not held.ready
    assert held.uncovered({"pixyz": 1, "nuke": 1}) == {"nuke": 1, "pixyz": 1}  # not held yet
    held.lease = {"id": "held by w1", "licences": {"pixyz": 1}}
    assert held.ready
    assert held.uncovered({"pixyz": 1, "nuke": 1}) == {"nuke": 1}
    assert held.uncovered({"pixyz": 3}) == {"pixyz": 2}
    assert held.uncovered(["pixyz"]) == {}
    assert held.uncovered(None) == {}


def test_a_worker_holding_nothing_is_always_ready() -> None:
    assert HeldLicences({}, "w1", "node-a").ready
