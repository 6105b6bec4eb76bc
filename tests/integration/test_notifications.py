"""Notifications of jobs' ends with real services: signed webhooks, retries, e-mail, studio hooks,
the first failed task, a receiver that never answers, and a delivery across a scheduler restart."""

import json
import time
from pathlib import Path

import pytest

from shared.errors import InvalidSpec
from shared.notify import DELIVERY_HEADER, SIGNATURE_HEADER, JobNotification, signature_matches
from tests.farm import Farm, wait_until
from tests.integration.test_cli_and_pipeline import corral
from tests.receivers import WebhookReceiver, mails, smtp_server

SECRET = "receivers-know-this-secret"


def configure(farm: Farm, **variables: str) -> None:
    farm.env.update({"CORRAL_NOTIFY_SECRET": SECRET, "CORRAL_NOTIFY_BACKOFF": "0.2",
                     "CORRAL_NOTIFY_BACKOFF_MAX": "1", **variables})


def deliveries(farm: Farm, job_id: int) -> list[dict]:
    return farm.rpc.scheduler.get_job(job_id, task_limit=0)["notifications"]


def test_a_finished_job_is_posted_once_signed_with_its_facts(farm: Farm) -> None:
    configure(farm)
    with WebhookReceiver() as receiver:
        farm.start(workers=1)
        job = farm.submit([{"command": ["true"]}, {"command": ["true"]}], name="shot010-comp",
                          notify={"webhooks": [receiver.url]})
        farm.wait_for_job(job["id"])
        farm.wait_for(lambda: receiver.received, 20, "the webhook")
        time.sleep(1.5)  # time enough for a second POST, were one to be sent
        (post,) = receiver.received
        assert signature_matches(SECRET, post.body, post.headers[SIGNATURE_HEADER])
        document = JobNotification.decode(post.body)
        assert (document.event, document.job_id, document.name, document.state) == \
            ("done", job["id"], "shot010-comp", "done")
        assert document.user == job["user"] and document.counts == {"done": 2}
        assert document.url.endswith(f"/jobs/{job['id']}")
        assert document.run_seconds is not None and document.total_seconds is not None
        assert post.headers[DELIVERY_HEADER] == str(document.delivery_id)
        (delivery,) = deliveries(farm, job["id"])
        assert (delivery["state"], delivery["tries"], delivery["last_status"]) == \
            ("delivered", 1, 200)
        assert delivery["target"] == receiver.url.split("/hooks")[0] + "/…"


def test_a_receiver_that_fails_twice_gets_it_on_the_third_try(farm: Farm) -> None:
    configure(farm)
    with WebhookReceiver([500, 503, 200]) as receiver:
        farm.start(workers=1)
        job = farm.submit([{"command": ["false"]}], notify={"webhooks": [receiver.url]})
        farm.wait_for_job(job["id"])
        farm.wait_for(lambda: receiver.answered(200), 30, "the third try")
        assert [r.answered for r in receiver.received] == [500, 503, 200]
        assert len({r.body for r in receiver.received}) == 1
        assert len({r.headers[DELIVERY_HEADER] for r in receiver.received}) == 1
        assert JobNotification.decode(receiver.received[-1].body).event == "failed"
        farm.wait_for(lambda: deliveries(farm, job["id"])[0]["state"] == "delivered", 10,
                      "the delivery to be recorded")
        assert deliveries(farm, job["id"])[0]["tries"] == 3
        farm.env["COLUMNS"] = "200"  # the table unwrapped
        shown = corral(farm, "job", str(job["id"]))
        assert shown.returncode == 0, shown.stderr
        assert "delivered" in shown.stdout and "webhook http://127.0.0.1" in shown.stdout
        as_json = corral(farm, "job", str(job["id"]), "--json")
        (delivery,) = json.loads(as_json.stdout)["notifications"]
        assert (delivery["state"], delivery["tries"], delivery["event"]) == \
            ("delivered", 3, "failed")


def test_a_receiver_that_never_answers_does_not_slow_the_farm(farm: Farm) -> None:
    # One delivery at a time, each allowed a minute: every later one waits behind the silent
    # receiver, and the farm's own work must not.
    configure(farm, CORRAL_NOTIFY_TIMEOUT="60", CORRAL_NOTIFY_CONCURRENCY="1")
    with WebhookReceiver([None]) as receiver:
        farm.start(workers=1)
        first = farm.submit([{"command": ["true"]}], notify={"webhooks": [receiver.url]})
        farm.wait_for_job(first["id"])
        farm.wait_for(lambda: receiver.received, 20, "the silent receiver to be called")
        later = [farm.submit([{"command": ["true"]} for _ in range(3)],
                             notify={"webhooks": [receiver.url]}) for _ in range(3)]
        for job in later:
            assert farm.wait_for_job(job["id"], timeout=30)["state"] == "done"
        assert len(receiver.received) == 1
        (held,) = deliveries(farm, first["id"])
        assert (held["state"], held["tries"]) == ("pending", 1)
        assert all(deliveries(farm, job["id"])[0]["tries"] == 0 for job in later)


def test_an_email_goes_through_the_smtp_server(farm: Farm, tmp_path: Path) -> None:
    with smtp_server(tmp_path) as (port, box):
        configure(farm, CORRAL_SMTP_HOST="127.0.0.1", CORRAL_SMTP_PORT=str(port),
                  CORRAL_SMTP_SENDER="farm@studio.example")
        farm.start(workers=1)
        job = farm.submit([{"command": ["sh", "-c", "exit 3"]}], name="sim-ocean",
                          notify={"emails": ["ana@studio.example"], "events": ["failed"]})
        farm.wait_for_job(job["id"])
        (mail,) = farm.wait_for(lambda: mails(box), 20, "the e-mail")
        assert (mail["To"], mail["From"]) == ("ana@studio.example", "farm@studio.example")
        assert f"job {job['id']} sim-ocean" in mail["Subject"] and "failed" in mail["Subject"]
        assert f"/jobs/{job['id']}" in mail.get_payload()
        farm.wait_for(lambda: deliveries(farm, job["id"])[0]["state"] == "delivered", 10,
                      "the delivery to be recorded")


def test_the_first_failed_task_is_told_while_the_job_still_runs(farm: Farm,
                                                                 tmp_path: Path) -> None:
    configure(farm)
    with WebhookReceiver() as receiver:
        farm.start(workers=2)
        job = farm.submit([{"command": ["sh", "-c", "exit 2"], "name": "bad-frame"},
                           {"command": wait_until(tmp_path / "go")},
                           {"command": ["sh", "-c", "exit 2"]}],
                          notify={"webhooks": [receiver.url], "events": ["first_failed_task"]})
        farm.wait_for(lambda: receiver.received, 20, "the first failure's webhook")
        document = JobNotification.decode(receiver.received[0].body)
        assert document.event == "first_failed_task" and document.task is not None
        assert document.state == "running"
        (tmp_path / "go").touch()
        assert farm.wait_for_job(job["id"])["state"] == "failed"
        time.sleep(1.5)
        assert len(receiver.received) == 1  # neither the second failure nor the job's end


def test_studio_hooks_from_the_config_hear_of_every_failed_job(farm: Farm) -> None:
    with WebhookReceiver() as receiver:
        configure(farm, CORRAL_NOTIFY_HOOKS=json.dumps([{"url": receiver.url,
                                                         "events": ["failed"]}]))
        farm.start(workers=1)
        done = farm.submit([{"command": ["true"]}])
        failed = farm.submit([{"command": ["false"]}])
        farm.wait_for_job(done["id"])
        farm.wait_for_job(failed["id"])
        farm.wait_for(lambda: receiver.received, 20, "the studio's hook")
        time.sleep(1.5)
        (post,) = receiver.received
        assert JobNotification.decode(post.body).job_id == failed["id"]
        assert deliveries(farm, done["id"]) == []
        assert deliveries(farm, failed["id"])[0]["source"] == "studio"


def test_a_bad_notify_is_refused_at_submit_naming_the_field(farm: Farm) -> None:
    farm.start(workers=0)
    with pytest.raises(InvalidSpec, match=r"^notify\.webhooks\[0\]"):
        farm.submit([{"command": ["true"]}], notify={"webhooks": ["ftp://files/drop"]})
    with pytest.raises(InvalidSpec, match=r"^notify\.emails: this farm has no SMTP server"):
        farm.submit([{"command": ["true"]}], notify={"emails": ["ana@studio.example"]})


def test_a_delivery_survives_a_scheduler_restart(farm: Farm) -> None:
    configure(farm, CORRAL_NOTIFY_BACKOFF="0.5")
    with WebhookReceiver([503]) as receiver:
        farm.start(workers=1)
        job = farm.submit([{"command": ["true"]}], notify={"webhooks": [receiver.url]})
        farm.wait_for_job(job["id"])
        farm.wait_for(lambda: deliveries(farm, job["id"])[0]["last_status"] == 503, 20,
                      "a refused try")
        farm.kill("scheduler")
        receiver.answers = [200]
        farm.start_service("scheduler")
        farm.reconnect()
        farm.wait_for(lambda: receiver.answered(200), 30, "the delivery after the restart")
        time.sleep(1.5)
        assert len(receiver.answered(200)) == 1
        assert len({r.headers[DELIVERY_HEADER] for r in receiver.received}) == 1
        farm.wait_for(lambda: deliveries(farm, job["id"])[0]["state"] == "delivered", 10,
                      "the delivery to be recorded")
