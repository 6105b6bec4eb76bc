"""The notification outbox and its sender without a broker: rows written with a job's end, tries,
backoff, giving up, signatures, and what people are shown of a target."""

import json
from typing import Any

import httpx
import pytest

from services.common.trouble import Troubles
from services.scheduler import notifications, readiness
from services.scheduler import retention as retention_ops
from services.scheduler import store as ops
from services.scheduler.notify_sender import NotificationSender
from shared.config import NotificationSettings, settings_from_mapping
from shared.db import Store
from shared.errors import ConfigError, InvalidSpec
from shared.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    JobNotification,
    shown_address,
    sign,
    signature_matches,
    studio_targets,
)
from shared.spec import validate_job_spec
from tests.unit.conftest import BANDS

HOOK = "https://chat.example/hooks/T000/secret-token"


def submit(store: Store, commands: list[list[str]], notify: dict[str, Any] | None = None,
           **spec: Any) -> dict[str, Any]:
    raw = {"tasks": [{"command": command} for command in commands], **spec}
    if notify is not None:
        raw["notify"] = notify
    plan = validate_job_spec(raw, BANDS, max_env_bytes=32768, max_tasks=100, can_email=True)
    return ops.submit_job(store, plan).reply


def run(store: Store, job_id: int, exit_codes: list[int]) -> None:
    tasks = ops.get_job(store, job_id)["tasks"]
    for task, code in zip(tasks, exit_codes, strict=True):
        token = ops.claim_task(store, task["id"], task["attempt"], "w1", "host",
                               5.0).reply["lease_token"]
        ops.finish_task(store, task["id"], token, code)


def outbox(store: Store, job_id: int) -> list[dict[str, Any]]:
    return ops.get_job(store, job_id, task_limit=0)["notifications"]


def sender(store: Store, handler: Any, **settings: Any) -> NotificationSender:
    config = NotificationSettings(**{"secret": "s3cret", "backoff_seconds": 0.01,
                                     "backoff_max_seconds": 0.01, **settings})
    return NotificationSender(config, "http://farm:8480", store, Troubles(),
                              transport=httpx.MockTransport(handler))


def deliver_all(post: NotificationSender) -> None:
    post.deliver_due()
    post.wait()


def test_a_job_ending_writes_one_delivery_per_target_that_asked(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["true"]], {"webhooks": [HOOK], "emails": ["ana@x.example"],
                                               "events": ["failed"]})
    other = submit(scheduler_store, [["false"]], {"webhooks": [HOOK], "emails": ["ana@x.example"],
                                                  "events": ["failed"]})
    run(scheduler_store, job["id"], [0])
    run(scheduler_store, other["id"], [1])
    assert outbox(scheduler_store, job["id"]) == []
    rows = outbox(scheduler_store, other["id"])
    assert [(r["event"], r["kind"], r["state"], r["tries"]) for r in rows] == [
        ("failed", "webhook", "pending", 0), ("failed", "email", "pending", 0)]
    assert rows[0]["target"] == "https://chat.example/…"


def test_a_job_without_notify_writes_nothing(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["false"]])
    run(scheduler_store, job["id"], [1])
    assert outbox(scheduler_store, job["id"]) == []


def test_cancelling_a_job_tells_of_its_cancel(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["true"]], {"webhooks": [HOOK]})
    ops.cancel_job(scheduler_store, job["id"])
    ops.cancel_job(scheduler_store, job["id"])  # a repeated cancel adds nothing
    assert [r["event"] for r in outbox(scheduler_store, job["id"])] == ["cancelled"]


def test_only_the_first_task_failing_for_good_is_told(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["false"], ["false"], ["true"]],
                 {"webhooks": [HOOK], "events": ["first_failed_task"]})
    run(scheduler_store, job["id"], [1, 1, 0])
    (row,) = outbox(scheduler_store, job["id"])
    assert row["event"] == "first_failed_task"


def test_a_failure_that_will_be_retried_is_not_told(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["false"]], {"webhooks": [HOOK],
                                                "events": ["first_failed_task"]},
                 retry={"max_attempts": 2})
    run(scheduler_store, job["id"], [1])
    assert outbox(scheduler_store, job["id"]) == []


def test_a_delivered_webhook_is_signed_and_carries_the_jobs_facts(scheduler_store: Store) -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    job = submit(scheduler_store, [["true"], ["true"]], {"webhooks": [HOOK]}, name="comp")
    run(scheduler_store, job["id"], [0, 0])
    deliver_all(sender(scheduler_store, receiver))
    (request,) = seen
    assert signature_matches("s3cret", request.content, request.headers[SIGNATURE_HEADER])
    document = JobNotification.decode(request.content)
    assert (document.event, document.job_id, document.name, document.counts) == \
        ("done", job["id"], "comp", {"done": 2})
    assert document.url == f"http://farm:8480/jobs/{job['id']}"
    assert request.headers[DELIVERY_HEADER] == str(document.delivery_id)
    (row,) = outbox(scheduler_store, job["id"])
    assert (row["state"], row["tries"], row["last_status"]) == ("delivered", 1, 204)


def test_a_refused_try_is_tried_again_after_its_backoff(scheduler_store: Store) -> None:
    answers = [500, 200]
    job = submit(scheduler_store, [["false"]], {"webhooks": [HOOK]})
    run(scheduler_store, job["id"], [1])
    post = sender(scheduler_store, lambda request: httpx.Response(answers.pop(0)),
                  backoff_seconds=30, backoff_max_seconds=30)
    deliver_all(post)
    (row,) = outbox(scheduler_store, job["id"])
    assert (row["state"], row["tries"], row["last_status"]) == ("pending", 1, 500)
    assert row["next_try_at"] > row["last_tried_at"] + 29
    deliver_all(post)  # not due yet: nothing is sent
    assert answers == [200]


def test_a_delivery_failing_past_its_time_is_given_up(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["false"]], {"webhooks": [HOOK]})
    run(scheduler_store, job["id"], [1])
    post = sender(scheduler_store, lambda request: httpx.Response(502), give_up_seconds=0.001)
    deliver_all(post)
    (row,) = outbox(scheduler_store, job["id"])
    assert (row["state"], row["last_status"]) == ("failed", 502)
    assert "502" in row["last_error"] and "secret-token" not in row["last_error"]


def test_an_unreachable_receivers_error_does_not_show_its_url(scheduler_store: Store) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}")

    job = submit(scheduler_store, [["false"]], {"webhooks": [HOOK]})
    run(scheduler_store, job["id"], [1])
    deliver_all(sender(scheduler_store, unreachable))
    (row,) = outbox(scheduler_store, job["id"])
    assert row["state"] == "pending" and "ConnectError" in row["last_error"]
    assert "secret-token" not in row["last_error"]


def test_a_claimed_delivery_is_not_claimed_again_while_held(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["false"]], {"webhooks": [HOOK]})
    run(scheduler_store, job["id"], [1])
    assert len(notifications.claim_due(scheduler_store, 10, 60)) == 1
    assert notifications.claim_due(scheduler_store, 10, 60) == []


def test_purging_a_job_forgets_its_deliveries(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["false"]], {"webhooks": [HOOK]})
    run(scheduler_store, job["id"], [1])
    assert retention_ops.purge_jobs(scheduler_store, 10**12)["purged"] == [job["id"]]
    assert notifications.claim_due(scheduler_store, 10, 60) == []


def test_the_job_shows_its_targets_without_a_webhooks_secret(scheduler_store: Store) -> None:
    job = submit(scheduler_store, [["true"]], {"webhooks": [HOOK], "emails": ["ana@x.example"]})
    shown = ops.get_job(scheduler_store, job["id"], task_limit=0)["notify"]
    assert [t["target"] for t in shown] == ["https://chat.example/…", "ana@x.example"]
    assert "secret-token" not in json.dumps(shown)


@pytest.mark.parametrize(("notify", "field"), [
    ({"webhooks": ["ftp://files/drop"]}, "notify.webhooks[0]"),
    ({"webhooks": ["https://ok.example/", "not a url"]}, "notify.webhooks[1]"),
    ({"webhooks": ["http://hooks.example:99999/x"]}, "notify.webhooks[0]"),
    ({"emails": ["nobody"]}, "notify.emails[0]"),
    ({"events": ["finished"]}, "notify.events[0]"),
    ({"events": []}, "notify.events"),
    ({"webhook": [HOOK]}, "notify.webhook"),
])
def test_a_bad_notify_is_refused_naming_the_field(notify: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        validate_job_spec({"tasks": [{"command": ["true"]}], "notify": notify}, BANDS,
                          max_env_bytes=32768, max_tasks=10, can_email=True)
    assert refused.value.message.startswith(f"{field}:")


def test_emails_are_refused_on_a_farm_without_smtp() -> None:
    with pytest.raises(InvalidSpec, match=r"^notify\.emails: this farm has no SMTP server"):
        validate_job_spec({"tasks": [{"command": ["true"]}],
                           "notify": {"emails": ["ana@x.example"]}}, BANDS,
                          max_env_bytes=32768, max_tasks=10)


def test_a_signature_checks_only_the_body_it_was_made_for() -> None:
    body = b'{"job_id":1}'
    assert signature_matches("key", body, sign("key", body))
    assert not signature_matches("key", b'{"job_id":2}', sign("key", body))
    assert not signature_matches("other", body, sign("key", body))
    assert not signature_matches("key", body, None)


def test_shown_addresses_hide_a_webhooks_path_and_query() -> None:
    assert shown_address("webhook", "http://127.0.0.1:9000/x?token=1") == "http://127.0.0.1:9000/…"
    assert shown_address("webhook", "https://hooks.example/") == "https://hooks.example/"
    assert shown_address("email", "ana@x.example") == "ana@x.example"


def test_backoff_doubles_up_to_its_limit() -> None:
    assert [notifications.next_pause(tries, 5, 30) for tries in (1, 2, 3, 4, 5)] == \
        [5, 10, 20, 30, 30]


def test_studio_hooks_become_targets_of_their_own_source() -> None:
    config = NotificationSettings(hooks=[{"url": HOOK, "events": ["failed"]},
                                         {"email": "wrangler@x.example"}],
                                  smtp_host="mail.x.example")
    assert studio_targets(config.hooks) == (
        {"kind": "webhook", "address": HOOK, "events": ["failed"], "source": "studio"},
        {"kind": "email", "address": "wrangler@x.example", "events": ["failed"],
         "source": "studio"})


def test_a_studio_hook_mailing_without_an_smtp_server_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"CORRAL\.notifications: .*no smtp_host"):
        settings_from_mapping({"CORRAL": {"notifications": {
            "hooks": [{"email": "wrangler@x.example", "events": ["failed"]}]}}})


def test_a_studio_hook_naming_both_a_url_and_an_email_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"CORRAL\.notifications\.hooks\.0"):
        settings_from_mapping({"CORRAL": {"notifications": {
            "smtp_host": "mail.x.example",
            "hooks": [{"url": HOOK, "email": "wrangler@x.example"}]}}})


def test_a_job_end_that_rolls_back_leaves_no_delivery_and_the_next_end_one(
        scheduler_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    job = submit(scheduler_store, [["true"]], {"webhooks": [HOOK]})
    (task,) = ops.get_job(scheduler_store, job["id"])["tasks"]
    token = ops.claim_task(scheduler_store, task["id"], task["attempt"], "w1", "host",
                           5.0).reply["lease_token"]

    def crash(job: Any) -> Any:
        raise RuntimeError("the scheduler died before the commit")

    # The job's end is written where finish_task ends it (services.scheduler.readiness).
    monkeypatch.setattr(readiness, "job_finished_event", crash)
    with pytest.raises(RuntimeError):
        ops.finish_task(scheduler_store, task["id"], token, 0)
    assert ops.get_job(scheduler_store, job["id"], task_limit=0)["state"] == "running"
    assert outbox(scheduler_store, job["id"]) == []
    monkeypatch.undo()
    ops.finish_task(scheduler_store, task["id"], token, 0)  # the worker's report, redelivered
    ops.finish_task(scheduler_store, task["id"], token, 0)  # and once more: a duplicate
    assert [r["event"] for r in outbox(scheduler_store, job["id"])] == ["done"]
