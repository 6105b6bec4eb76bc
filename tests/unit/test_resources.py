"""Sizes, grants, host detection and the ledger that keeps workers on one host from overspending."""

import sys
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import InvalidSpec
from shared.resources import (
    GpuInfo,
    HostLedger,
    HostTotals,
    Reservation,
    Resources,
    detect_host_totals,
    format_size,
    grant,
    parse_size,
)

GB = 1024


def host_totals(host: str, cores: float, memory_mb: int, gpus: int = 0,
                custom: dict[str, float] | None = None) -> HostTotals:
    return HostTotals(host, Resources(cores, memory_mb, gpus, custom or {}),
                      tuple(GpuInfo(index, "test", 8 * GB) for index in range(gpus)))


def ledger_with(*totals: HostTotals) -> HostLedger:
    ledger = HostLedger()
    for each in totals:
        ledger.set_totals(each)
    return ledger


def reserved_on(ledger: HostLedger, host: str) -> Resources:
    return sum((held.resources for held in ledger.reservations(host)), Resources(0, 0))


# Sizes

@pytest.mark.parametrize("text, megabytes", [
    ("512M", 512), ("64G", 64 * GB), ("1.5T", 1536 * GB), ("2048", 2048), (2048, 2048),
    ("512MB", 512), ("64GiB", 64 * GB), ("64gib", 64 * GB), ("1g", GB), ("16 GB", 16 * GB),
    ("2048K", 2), ("512K", 1), ("0", 0), (".5G", 512),
])
def test_parse_size_reads_binary_multiples_in_megabytes(text: str | int, megabytes: int) -> None:
    assert parse_size(text) == megabytes


@pytest.mark.parametrize("text", [
    "12 parsecs", "", "G", "-5G", -5, "1.2.3G", "5X", "64GB2", "nan", "inf", "1e3M", True, 1.5,
])
def test_parse_size_refuses_anything_else_quoting_it(text: Any) -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_size(text)
    assert repr(text) in str(raised.value)


def test_parse_size_error_names_the_field_and_shows_examples() -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_size("12 parsecs")
    assert str(raised.value) == "memory: '12 parsecs' is not a size like 512M, 64G or 1.5T"


@pytest.mark.parametrize("megabytes, text", [
    (65536, "64G"), (1536, "1.5G"), (512, "512M"), (1536 * GB, "1.5T"), (1000, "1000M"),
    (0, "0M"), (1280, "1.25G"), (1034, "1034M"),
])
def test_format_size_uses_the_largest_exact_unit(megabytes: int, text: str) -> None:
    assert format_size(megabytes) == text


@given(st.integers(min_value=0, max_value=2 ** 40))
def test_format_size_reads_back_to_the_same_size(megabytes: int) -> None:
    assert parse_size(format_size(megabytes)) == megabytes


# Resources and grants

def test_resources_add_and_subtract_every_kind() -> None:
    big = Resources(8, 16 * GB, 2, {"licence": 3})
    small = Resources(2.5, 4 * GB, 1, {"licence": 1})
    assert big - small == Resources(5.5, 12 * GB, 1, {"licence": 2})
    assert big - small + small == big


def test_subtracting_more_than_there_is_raises() -> None:
    with pytest.raises(ValueError):
        Resources(4, 8 * GB) - Resources(2, 16 * GB)


def test_a_custom_count_missing_on_a_host_does_not_fit() -> None:
    assert not Resources(1, GB, custom={"licence": 1}).fits_in(Resources(32, 64 * GB))


def test_fractional_cores_add_up_exactly() -> None:
    total = sum((Resources(0.1, 0) for _ in range(10)), Resources(0, 0))
    assert total == Resources(1, 0)


def test_grant_gives_preferred_when_it_is_available() -> None:
    given_amounts = grant(Resources(2, 4 * GB), Resources(8, 16 * GB), Resources(32, 64 * GB))
    assert given_amounts == Resources(8, 16 * GB)


def test_grant_gives_what_is_available_when_preferred_is_above_it() -> None:
    given_amounts = grant(Resources(2, 4 * GB), Resources(64, 128 * GB), Resources(24, 48 * GB))
    assert given_amounts == Resources(24, 48 * GB)


def test_grant_never_gives_less_than_minimum_when_preferred_is_below_it() -> None:
    given_amounts = grant(Resources(8, 16 * GB), Resources(1, GB), Resources(32, 64 * GB))
    assert given_amounts == Resources(8, 16 * GB)


def test_grant_without_preferred_gives_the_minimum() -> None:
    given_amounts = grant(Resources(4, 8 * GB, 1), None, Resources(32, 64 * GB, 2))
    assert given_amounts == Resources(4, 8 * GB, 1)


def test_grant_is_none_when_the_minimum_does_not_fit() -> None:
    assert grant(Resources(8, 16 * GB), Resources(8, 16 * GB), Resources(4, 64 * GB)) is None


# Detection

def test_detection_reports_this_machines_cores_and_memory() -> None:
    totals = detect_host_totals("here")
    assert totals.resources.cores == psutil.cpu_count(logical=True)
    assert totals.resources.memory_mb == psutil.virtual_memory().total // 2 ** 20


def test_detection_overrides_replace_what_is_detected() -> None:
    totals = detect_host_totals("here", cores=6, memory="12G", gpus=2)
    assert totals.resources == Resources(6, 12 * GB, 2)
    assert totals.gpus == (GpuInfo(0, "declared", 0), GpuInfo(1, "declared", 0))


def test_detection_finds_no_gpus_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    totals = detect_host_totals("here")
    assert totals.gpus == () and totals.resources.gpus == 0


def fake_nvml(names: list[Any], init_error: bool = False) -> SimpleNamespace:
    class NVMLError(Exception):
        pass

    def nvml_init() -> None:
        if init_error:
            raise NVMLError("driver not loaded")

    return SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=nvml_init, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(names), nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: names[handle],
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(total=24 * 2 ** 30),
    )


def test_detection_lists_gpus_nvml_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(["RTX 4090", b"RTX A6000"]))
    totals = detect_host_totals("here")
    assert totals.gpus == (GpuInfo(0, "RTX 4090", 24 * GB), GpuInfo(1, "RTX A6000", 24 * GB))
    assert totals.resources.gpus == 2


def test_detection_finds_no_gpus_when_nvml_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(["RTX 4090"], init_error=True))
    assert detect_host_totals("here").gpus == ()


def test_detection_refuses_a_memory_override_that_is_not_a_size() -> None:
    with pytest.raises(InvalidSpec):
        detect_host_totals("here", memory="lots")


# Ledger

def test_lifeblood_example_workers_share_one_host_without_overspending() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB))
    ledger.reserve("task 1 attempt 1", "farm01", Resources(8, 16 * GB))
    assert ledger.free("farm01") == Resources(24, 48 * GB)
    ledger.reserve("task 2 attempt 1", "farm01", Resources(20, 40 * GB))
    assert ledger.free("farm01") == Resources(4, 8 * GB)
    ledger.release("task 1 attempt 1")
    assert ledger.free("farm01") == Resources(12, 24 * GB)
    ledger.release("task 2 attempt 1")
    assert ledger.free("farm01") == Resources(32, 64 * GB)


def test_a_reservation_that_does_not_fit_takes_nothing() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB, gpus=1))
    assert ledger.reserve("task 1 attempt 1", "farm01", Resources(8, 16 * GB, 2)) is None
    assert ledger.free("farm01") == Resources(32, 64 * GB, 1)
    assert ledger.reservations("farm01") == ()


def test_a_reservation_gets_preferred_up_to_what_is_free() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB))
    held = ledger.reserve("task 1 attempt 1", "farm01", Resources(4, 8 * GB),
                          preferred=Resources(64, 8 * GB))
    assert held is not None and held.resources == Resources(32, 8 * GB)


def test_a_host_that_never_reported_takes_no_reservations() -> None:
    ledger = HostLedger()
    assert ledger.reserve("task 1 attempt 1", "ghost", Resources(0, 0)) is None
    assert ledger.free("ghost") == Resources(0, 0)


def test_reserving_the_same_id_twice_returns_the_first_and_takes_once() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB, gpus=2))
    first = ledger.reserve("task 12 attempt 3", "farm01", Resources(8, 16 * GB, 1))
    again = ledger.reserve("task 12 attempt 3", "farm01", Resources(8, 16 * GB, 1))
    assert again == first
    assert ledger.free("farm01") == Resources(24, 48 * GB, 1)


def test_releasing_twice_or_an_unknown_id_changes_nothing() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB))
    ledger.reserve("task 1 attempt 1", "farm01", Resources(8, 16 * GB))
    ledger.reserve("task 2 attempt 1", "farm01", Resources(8, 16 * GB))
    assert ledger.release("task 1 attempt 1") is not None
    assert ledger.release("task 1 attempt 1") is None
    assert ledger.release("task 99 attempt 1") is None
    assert ledger.free("farm01") == Resources(24, 48 * GB)


def test_gpus_are_handed_out_lowest_free_index_first() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB, gpus=4))
    first = ledger.reserve("a", "farm01", Resources(1, GB, 1))
    second = ledger.reserve("b", "farm01", Resources(1, GB, 2))
    ledger.release("a")
    third = ledger.reserve("c", "farm01", Resources(1, GB, 2))
    assert first is not None and first.gpu_indices == (0,)
    assert second is not None and second.gpu_indices == (1, 2)
    assert third is not None and third.gpu_indices == (0, 3)


def test_lowering_totals_under_reservations_clamps_free_and_refuses_new_work() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB))
    ledger.reserve("task 1 attempt 1", "farm01", Resources(16, 16 * GB))
    ledger.set_totals(host_totals("farm01", 8, 64 * GB))
    assert ledger.free("farm01") == Resources(0, 48 * GB)
    assert ledger.reserve("task 2 attempt 1", "farm01", Resources(0, GB)) is None


def test_new_work_is_accepted_again_once_reservations_fit_lowered_totals() -> None:
    ledger = ledger_with(host_totals("farm01", 32, 64 * GB))
    ledger.reserve("task 1 attempt 1", "farm01", Resources(16, 16 * GB))
    ledger.set_totals(host_totals("farm01", 8, 64 * GB))
    ledger.release("task 1 attempt 1")
    assert ledger.reserve("task 2 attempt 1", "farm01", Resources(4, GB)) is not None
    assert ledger.free("farm01") == Resources(4, 63 * GB)


def test_rebuild_restores_free_amounts_and_held_gpus_from_worker_reports() -> None:
    totals = host_totals("farm01", 32, 64 * GB, gpus=2)
    running = Reservation("task 7 attempt 1", "farm01", Resources(8, 16 * GB, 1), (0,))
    ledger = HostLedger.rebuild([totals], [running])
    assert ledger.free("farm01") == Resources(24, 48 * GB, 1)
    fresh = ledger.reserve("task 8 attempt 1", "farm01", Resources(1, GB, 1))
    assert fresh is not None and fresh.gpu_indices == (1,)


def test_rebuild_keeps_reservations_that_no_longer_fit_and_refuses_new_work() -> None:
    totals = host_totals("farm01", 4, 64 * GB)
    running = Reservation("task 7 attempt 1", "farm01", Resources(8, 16 * GB))
    ledger = HostLedger.rebuild([totals], [running])
    assert ledger.reservations("farm01") == (running,)
    assert ledger.reserve("task 8 attempt 1", "farm01", Resources(0, GB)) is None


# Properties of the ledger under any sequence of reserve and release

HOSTS = ("farm01", "farm02", "farm03")
RESERVATION_IDS = tuple(f"task {number} attempt 1" for number in range(8))
amounts = st.builds(
    Resources,
    cores=st.integers(0, 16_000).map(lambda millicores: millicores / 1000),
    memory_mb=st.integers(0, 32 * GB),
    gpus=st.integers(0, 3),
    custom=st.dictionaries(st.sampled_from(["licence", "dongle"]), st.integers(0, 3)),
)
hosts = st.tuples(*(
    st.builds(host_totals, st.just(name), st.integers(0, 64_000).map(lambda m: m / 1000),
              st.integers(0, 128 * GB), st.integers(0, 4),
              st.dictionaries(st.just("licence"), st.integers(0, 4)))
    for name in HOSTS))
operations = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(RESERVATION_IDS), st.sampled_from(HOSTS),
              amounts, st.none() | amounts),
    st.tuples(st.just("release"), st.sampled_from(RESERVATION_IDS)),
), max_size=40)


def apply(ledger: HostLedger, operation: tuple[Any, ...]) -> Reservation | None:
    if operation[0] == "reserve":
        return ledger.reserve(*operation[1:])
    return ledger.release(operation[1])


@given(hosts, operations)
def test_no_sequence_of_reserve_and_release_overspends_a_host(
        totals: tuple[HostTotals, ...], steps: list[tuple[Any, ...]]) -> None:
    ledger = ledger_with(*totals)
    for step in steps:
        apply(ledger, step)
        for each in totals:
            reserved = reserved_on(ledger, each.host)
            assert reserved.fits_in(each.resources)
            assert ledger.free(each.host) + reserved == each.resources


@given(hosts, operations)
def test_no_gpu_is_held_by_two_live_reservations(
        totals: tuple[HostTotals, ...], steps: list[tuple[Any, ...]]) -> None:
    ledger = ledger_with(*totals)
    for step in steps:
        apply(ledger, step)
        for each in totals:
            held = [index for live in ledger.reservations(each.host) for index in live.gpu_indices]
            assert len(held) == len(set(held))
            assert set(held) <= {gpu.index for gpu in each.gpus}


@given(hosts, operations)
def test_a_new_reservation_holds_its_minimum_and_no_more_than_was_free(
        totals: tuple[HostTotals, ...], steps: list[tuple[Any, ...]]) -> None:
    ledger = ledger_with(*totals)
    for step in steps:
        is_new = step[0] == "reserve" and step[1] not in {
            live.id for host in HOSTS for live in ledger.reservations(host)}
        free_before = ledger.free(step[2]) if is_new else None
        result = apply(ledger, step)
        if is_new and result is not None and free_before is not None:
            assert step[3].fits_in(result.resources)
            assert result.resources.fits_in(free_before)
        elif is_new and free_before is not None:
            assert not step[3].fits_in(free_before)


def test_a_replaced_host_report_is_told_with_both_totals_and_which_hold() -> None:
    from shared.resources import replaced_totals_note

    assert replaced_totals_note("vm", {"replaced": None, "totals": {"cores": 4}}) is None
    note = replaced_totals_note("vm", {
        "replaced": {"cores": 8, "memory_mb": 16384, "gpus": 0, "reported_at": 1.0},
        "totals": {"cores": 4, "memory_mb": 8192, "gpus": 0}})
    assert note is not None
    assert "8 cores, 16G" in note and "now 4 cores, 8G, 0 GPUs hold for every worker on vm" in note
