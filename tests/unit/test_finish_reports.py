"""The scheduler's finish-report consumer: a report that keeps failing is tried again, with a
growing pause, then set aside; it never loops and is never lost."""

from typing import Any

import pytest
from nameko.testing.services import worker_factory

from services.scheduler import service as scheduler
from services.scheduler import store as store_ops
from services.scheduler.service import MAX_REPORT_TRIES, SchedulerService
from shared.errors import StaleLease

REPORT = {"task_id": 7, "lease_token": "t", "exit_code": 0}


class Core:
    """Stands in for the Dispatcher: records what the consumer publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.store = None
        self.refusals = None  # the farm's "no licence" policy: none configured here

    def send(self, queue: str, body: dict[str, Any]) -> None:
        self.sent.append((queue, body))

    def request_release(self) -> None:
        pass


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(scheduler.eventlet, "sleep", lambda seconds: None)
    return worker_factory(SchedulerService, core=Core())


def test_a_failing_report_is_published_again_then_set_aside(service: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def database_down(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database is down")

    monkeypatch.setattr(store_ops, "finish_task", database_down)
    report = dict(REPORT)
    for tries in range(1, MAX_REPORT_TRIES):
        service.handle_finish_report(report)
        queue, report = service.core.sent[-1]
        assert (queue, report) == ("corral.reports", {**REPORT, "tries": tries})
    service.handle_finish_report(report)
    queue, kept = service.core.sent[-1]
    assert queue == "corral.reports.dead"
    assert kept["report"] == report
    assert kept["error"] == (f"failed {MAX_REPORT_TRIES} times, last: "
                             "RuntimeError('database is down')")
    assert len(service.core.sent) == MAX_REPORT_TRIES


def test_a_stale_report_is_dropped_quietly(service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def stale(*args: Any, **kwargs: Any) -> None:
        raise StaleLease("task 7: lease t is not the current one")

    monkeypatch.setattr(store_ops, "finish_task", stale)
    service.handle_finish_report(dict(REPORT))
    assert service.core.sent == []
