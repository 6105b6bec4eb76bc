"""The REST API against a real farm: submit, read, act by role, logs, files, errors that say what."""

import time
from pathlib import Path

import requests

from shared.identity import Role
from tests.farm import wait_until
from tests.receivers import WebhookReceiver
from tests.web.conftest import Monitor, start_farm_and_monitor


def _submit(monitor: Monitor, user: str, tasks: list[dict], **spec: object) -> dict:
    reply = monitor.call(monitor.as_(user, Role.ARTIST), "POST", "/api/v1/jobs",
                         json={"tasks": tasks, **spec})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_submit_then_read_the_job_and_its_task(shared_monitor: Monitor) -> None:
    job = _submit(shared_monitor, "ana", [{"command": ["echo", "hello from the api"]}],
                  name="api-hello")
    assert job["user"] == "ana"
    shared_monitor.farm.wait_for_job(job["id"])
    got = shared_monitor.call(None, "GET", f"/api/v1/jobs/{job['id']}").json()
    assert got["state"] == "done" and got["counts"] == {"done": 1}
    task_id = got["tasks"][0]["id"]
    log = shared_monitor.call(None, "GET", f"/api/v1/tasks/{task_id}/log").json()
    assert "hello from the api" in log["text"]
    listed = shared_monitor.call(None, "GET", "/api/v1/jobs?name=api-hel*").json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]


def test_a_bad_spec_is_refused_with_400_naming_the_field(shared_monitor: Monitor) -> None:
    reply = shared_monitor.call(shared_monitor.as_("ana", Role.ARTIST), "POST", "/api/v1/jobs",
                                json={"tasks": [{"command": ["echo", 5]}]})
    assert reply.status_code == 400
    assert reply.json()["field"] == "body.tasks[0].command[1]"


def test_a_submit_repeated_under_its_idempotency_key_returns_the_first_job(
        shared_monitor: Monitor) -> None:
    ana = shared_monitor.as_("ana", Role.ARTIST)
    body = {"tasks": [{"command": ["true"]}], "name": "keyed"}
    key = f"pipeline-{time.time_ns()}"
    first = shared_monitor.call(ana, "POST", "/api/v1/jobs", json=body,
                                headers={"Idempotency-Key": key})
    again = shared_monitor.call(ana, "POST", "/api/v1/jobs", json=body,
                                headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    other = shared_monitor.call(ana, "POST", "/api/v1/jobs", json=body,
                                headers={"Idempotency-Key": key + "-2"})
    assert other.json()["id"] != first.json()["id"]
    template = {"args": ["scene.blend", "--frames", "1-2"]}
    made = [shared_monitor.call(ana, "POST", "/api/v1/templates/blender", json=template,
                                headers={"Idempotency-Key": key + "-blender"}).json()["id"]
            for _ in range(2)]
    assert made[0] == made[1]
    clash = shared_monitor.call(ana, "POST", "/api/v1/jobs",
                                json={**body, "submission_key": "another"},
                                headers={"Idempotency-Key": key})
    assert clash.status_code == 400 and clash.json()["field"] == "Idempotency-Key"
    too_long = shared_monitor.call(ana, "POST", "/api/v1/jobs", json=body,
                                   headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 400 and too_long.json()["field"] == "Idempotency-Key"
    document = shared_monitor.call(None, "GET", "/api/v1/openapi.json").json()
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header"
               for p in document["paths"]["/api/v1/jobs"]["post"]["parameters"])


def test_an_artist_cannot_act_on_another_users_job_and_a_wrangler_can(
        shared_monitor: Monitor, tmp_path: Path) -> None:
    job = _submit(shared_monitor, "ana", [{"command": wait_until(tmp_path / "never")}])
    for path, body in ((f"/api/v1/jobs/{job['id']}/cancel", None),
                       (f"/api/v1/jobs/{job['id']}/pause", {}),
                       (f"/api/v1/jobs/{job['id']}/priority", {"priority": 500})):
        reply = shared_monitor.call(shared_monitor.as_("ben", Role.ARTIST), "POST", path,
                                    json=body)
        assert reply.status_code == 403, (path, reply.text)
    untouched = shared_monitor.farm.rpc.scheduler.get_job(job["id"], task_limit=0)
    assert untouched["state"] != "cancelled" and not untouched["paused"]
    assert untouched["priority"] == 50
    reply = shared_monitor.call(shared_monitor.as_("wendy", Role.WRANGLER), "POST",
                                f"/api/v1/jobs/{job['id']}/cancel")
    assert reply.status_code == 200, reply.text
    assert shared_monitor.farm.rpc.scheduler.get_job(job["id"], task_limit=0)["state"] == \
        "cancelled"


def test_a_running_tasks_log_tail_grows(shared_monitor: Monitor, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    job = _submit(shared_monitor, "ana", [{"command": [
        "sh", "-c", f"i=0; while [ ! -e {stop} ]; do i=$((i+1)); echo line $i; sleep 0.2; done"]}])
    task_id = shared_monitor.farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]

    def size() -> int:
        return int(shared_monitor.call(None, "GET", f"/api/v1/tasks/{task_id}/log").json()["size"])

    first = shared_monitor.farm.wait_for(size, 30, "the log to start")
    shared_monitor.farm.wait_for(lambda: size() > first, 10, "the log to grow")
    piece = shared_monitor.call(None, "GET", f"/api/v1/tasks/{task_id}/log?offset=0&length=7")
    assert piece.json()["text"] == "line 1\n"
    stop.touch()
    shared_monitor.farm.wait_for_job(job["id"])


def test_an_uploaded_file_feeds_a_job_and_its_output_downloads(shared_monitor: Monitor) -> None:
    artist = shared_monitor.as_("ana", Role.ARTIST)
    script = b"import json, os, sys\nopen(os.environ['CORRAL_RESULT'], 'w').write(json.dumps({'n': 7}))\n"
    up = shared_monitor.call(artist, "PUT", "/api/v1/files/scripts/make.py", data=script)
    assert up.status_code == 200, up.text
    assert up.json()["relative"] == "uploads/ana/scripts/make.py"
    again = shared_monitor.call(artist, "PUT", "/api/v1/files/scripts/make.py", data=script)
    assert again.status_code == 409
    job = _submit(shared_monitor, "ana", [{"command": ["python3", up.json()["path"]]}])
    done = shared_monitor.farm.wait_for_job(job["id"])
    assert done["state"] == "done"
    task_id = done["tasks"][0]["id"]
    assert shared_monitor.call(None, "GET", f"/api/v1/tasks/{task_id}/result").json()[
        "result"] == {"n": 7}
    back = shared_monitor.call(None, "GET", "/api/v1/files/uploads/ana/scripts/make.py")
    assert back.status_code == 200 and back.content == script


def test_an_upload_over_the_limit_gets_413_and_leaves_nothing(tmp_path: Path, vhost: str) -> None:
    farm, monitor = start_farm_and_monitor(tmp_path, vhost, CORRAL_UPLOAD_LIMIT_BYTES="1000")
    try:
        reply = monitor.call(monitor.as_("ana", Role.ARTIST), "PUT", "/api/v1/files/big.bin",
                             data=b"x" * 5000)
        assert reply.status_code == 413, reply.text
        assert not list((tmp_path / "storage").rglob("big.bin"))
    finally:
        farm.stop()


def test_with_the_scheduler_stopped_the_api_answers_503_within_two_seconds(
        monitor: Monitor) -> None:
    monitor.farm.kill("scheduler")
    started = time.monotonic()
    reply = monitor.call(None, "GET", "/api/v1/jobs")
    assert reply.status_code == 503
    assert time.monotonic() - started < 2.5
    assert "scheduler" in reply.json()["error"]
    page = requests.get(monitor.url + "/", timeout=10)
    assert page.status_code == 200 and "scheduler" in page.text and "down" in page.text


def test_actions_from_the_api_and_the_cli_are_audited_with_their_actor(
        shared_monitor: Monitor, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.farm import CONFIG, ROOT

    farm = shared_monitor.farm
    mine = _submit(shared_monitor, "ana", [{"command": wait_until(tmp_path / "never")}])
    reply = shared_monitor.call(shared_monitor.as_("ana", Role.ARTIST), "POST",
                                f"/api/v1/jobs/{mine['id']}/cancel")
    assert reply.status_code == 200, reply.text
    other = _submit(shared_monitor, "ben", [{"command": wait_until(tmp_path / "never")}])
    done = subprocess.run([sys.executable, "-m", "services.cli", "cancel", str(other["id"]),
                           "--config", str(CONFIG)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**farm.env, "CORRAL_TOKEN": shared_monitor.token(
                              "carl", Role.WRANGLER)})
    assert done.returncode == 0, done.stdout + done.stderr
    admin = shared_monitor.as_("root", Role.ADMIN)
    entries = shared_monitor.call(admin, "GET", "/api/v1/audit?limit=1000").json()
    by_target = {(entry["actor"], entry["target"]) for entry in entries
                 if "cancel" in entry["action"]}
    assert ("ana", f"job {mine['id']}") in by_target
    assert ("carl", f"job {other['id']}") in by_target
    page = shared_monitor.call(admin, "GET", "/audit")
    assert page.status_code == 200 and "carl" in page.text


PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
                    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def test_a_renders_last_frame_is_its_thumbnail(shared_monitor: Monitor, tmp_path: Path) -> None:
    storage = Path(shared_monitor.farm.env["CORRAL_STORAGE_ROOT"])
    shot = storage / "shots" / "s010"
    shot.mkdir(parents=True, exist_ok=True)
    (tmp_path / "frame.png").write_bytes(PNG)
    fake = tmp_path / "blender"  # writes each frame of its -s/-e range under render/
    fake.write_text("#!/bin/sh\ns=''; e=''\nwhile [ $# -gt 0 ]; do case $1 in "
                    "-s) s=$2; shift;; -e) e=$2; shift;; esac; shift; done\n"
                    f"mkdir -p {shot}/render\nfor f in $(seq $s $e); do "
                    f"cp {tmp_path}/frame.png {shot}/render/frame_$(printf %04d $f).png; done\n")
    fake.chmod(0o755)
    job = shared_monitor.call(shared_monitor.as_("ana", Role.ARTIST), "POST", "/api/v1/jobs",
                              json={"layers": [{
                                  "name": "render", "frames": "1-2", "chunk": 2,
                                  "command": [str(fake), "-b", str(shot / "s010.blend"), "-o",
                                              "//render/frame_####", "-F", "PNG",
                                              "-s", "{start}", "-e", "{end}"]}]}).json()
    done = shared_monitor.farm.wait_for_job(job["id"])
    assert done["state"] == "done", done
    reply = shared_monitor.call(None, "GET", f"/api/v1/tasks/{done['tasks'][0]['id']}/thumbnail")
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "image/png"
    assert reply.content == PNG


def test_draining_a_worker_says_clearly_when_the_registry_cannot_yet(
        shared_monitor: Monitor) -> None:
    worker_id = shared_monitor.farm.rpc.registry.list_workers(alive=True)[0]["worker_id"]
    reply = shared_monitor.call(shared_monitor.as_("wendy", Role.WRANGLER), "POST",
                                f"/api/v1/workers/{worker_id}/state", json={"state": "drain"})
    assert reply.status_code in (200, 409), reply.text
    if reply.status_code == 409:
        assert "cannot drain or disable workers yet" in reply.json()["error"]


def test_submit_accepts_notify_and_the_job_shows_its_deliveries(shared_monitor: Monitor) -> None:
    with WebhookReceiver() as receiver:
        job = _submit(shared_monitor, "ana", [{"command": ["true"]}],
                      notify={"webhooks": [receiver.url], "events": ["done"]})
        shared_monitor.farm.wait_for_job(job["id"])
        shared_monitor.farm.wait_for(lambda: receiver.received, 20, "the webhook")

        def delivered() -> list[dict]:
            got = shared_monitor.call(None, "GET", f"/api/v1/jobs/{job['id']}").json()
            return [n for n in got["notifications"] if n["state"] == "delivered"]

        (delivery,) = shared_monitor.farm.wait_for(delivered, 10, "the delivery to be recorded")
        assert (delivery["event"], delivery["kind"], delivery["tries"]) == ("done", "webhook", 1)
        page = shared_monitor.call(None, "GET", f"/jobs/{job['id']}")
        assert "Notifications" in page.text and "delivered" in page.text


def test_a_bad_notify_is_refused_with_400_naming_the_field(shared_monitor: Monitor) -> None:
    reply = shared_monitor.call(shared_monitor.as_("ana", Role.ARTIST), "POST", "/api/v1/jobs",
                                json={"tasks": [{"command": ["true"]}],
                                      "notify": {"webhooks": ["gopher://old"]}})
    assert reply.status_code == 400
    assert reply.json()["field"] == "body.notify.webhooks[0]"
