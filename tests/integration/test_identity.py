"""Identity on the RPC surface, against the real broker: every service verifies every call's token.

One farm (registry, scheduler, negotiator, license; no workers: nothing here needs a task to run)
serves the whole module, on its own vhost.
"""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.errors import PermissionDenied, Unauthenticated
from shared.identity import Role, issue_token
from tests.farm import AMQP_HOST, CONFIG, ROOT, Farm, create_vhost, delete_vhost

SERVICES = ("registry", "scheduler", "resource_negotiator", "license")
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    vhost = create_vhost()
    instance = Farm(tmp_path_factory.mktemp("identity"), f"amqp://guest:guest@{AMQP_HOST}/{vhost}",
                    vhost)
    instance.env["CORRAL_REVOCATION_REFRESH_SECONDS"] = "1"
    try:
        for service in SERVICES:
            instance.start_service(service)
        for user, role in (("ana", "artist"), ("bob", "artist"), ("wendy", "wrangler"),
                           ("vic", "viewer")):
            instance.rpc.registry.create_user(user, role, PASSWORD)
        yield instance
    finally:
        instance.stop()
        delete_vhost(vhost)


def login(farm: Farm, user: str) -> Any:
    """An RPC client logged in as `user` with their password, as `corral login` does."""
    token = farm.client(None).registry.authenticate(user, PASSWORD)["token"]
    return farm.client(token)


def queued_job(client: Any) -> dict[str, Any]:
    """A job that stays queued (no worker serves the farm), submitted by `client`'s user."""
    return client.scheduler.submit_job({"name": "shot010", "env": {"API_KEY": "s3cret"},
                                        "tasks": [{"command": ["true"]}]})


# One read and one mutation each service serves to people, and one worker-facing method.
READS = {"registry": ("list_workers", ()), "scheduler": ("list_jobs", ()),
         "resource_negotiator": ("list_hosts", ()), "license": ("list_pools", ())}
MUTATIONS = {"registry": ("create_user", ("mallory", "admin", None)),
             "scheduler": ("cancel_job", (1,)), "resource_negotiator": ("report_host",
                                                                        ("evil", 0, 0)),
             "license": ("set_pool", ("nuke", 0))}


@pytest.mark.parametrize("service", SERVICES)
def test_a_call_without_a_token_is_refused_by_every_service(farm: Farm, service: str) -> None:
    method, arguments = READS[service]
    with pytest.raises(Unauthenticated, match="no token"):
        getattr(getattr(farm.client(None), service), method)(*arguments)


@pytest.mark.parametrize("service", SERVICES)
def test_a_viewer_reads_but_cannot_change_anything_on_any_service(farm: Farm,
                                                                   service: str) -> None:
    viewer = login(farm, "vic")
    method, arguments = READS[service]
    getattr(getattr(viewer, service), method)(*arguments)
    method, arguments = MUTATIONS[service]
    with pytest.raises(PermissionDenied):
        getattr(getattr(viewer, service), method)(*arguments)


@pytest.mark.parametrize("token", ["forged", "expired", "garbage"])
def test_forged_expired_and_malformed_tokens_are_refused(farm: Farm, token: str) -> None:
    tokens = {"forged": issue_token("another farm's secret, 32 chars+", "ana", Role.ADMIN),
              "expired": farm.token_for("ana", Role.ADMIN, ttl_seconds=0.5),
              "garbage": "corral.not.atoken"}
    time.sleep(1)
    client = farm.client(tokens[token])
    for service in SERVICES:
        method, arguments = READS[service]
        with pytest.raises(Unauthenticated):
            getattr(getattr(client, service), method)(*arguments)


def test_a_revoked_token_is_refused_by_every_service_and_by_one_started_later(farm: Farm) -> None:
    farm.rpc.registry.create_user("nightly", "artist")
    issued = farm.rpc.registry.create_token("nightly", "cron", 3600)
    client = farm.client(issued["token"])
    assert client.scheduler.list_jobs()["total"] >= 0
    farm.rpc.registry.revoke_token(issued["token_id"])

    def refused_everywhere() -> bool:
        for service in SERVICES:
            method, arguments = READS[service]
            try:
                getattr(getattr(client, service), method)(*arguments)
                return False
            except Unauthenticated:
                pass
        return True

    farm.wait_for(refused_everywhere, 10, "every service to refuse the revoked token")
    farm.kill("license")
    farm.start_service("license")  # knows nothing until it reads the registry's list
    farm.wait_for(lambda: refused_everywhere(), 10, "the restarted license service to refuse it")


def test_an_artist_cannot_cancel_another_users_job_but_a_wrangler_can(farm: Farm) -> None:
    job = queued_job(login(farm, "bob"))
    with pytest.raises(PermissionDenied, match="belongs to bob"):
        login(farm, "ana").scheduler.cancel_job(job["id"])
    assert farm.rpc.scheduler.get_job(job["id"])["state"] == "queued"
    assert login(farm, "wendy").scheduler.cancel_job(job["id"])["state"] == "cancelled"


def test_an_artist_submits_only_as_themselves(farm: Farm) -> None:
    ana = login(farm, "ana")
    assert queued_job(ana)["user"] == "ana"
    with pytest.raises(PermissionDenied, match="^user: ana may submit jobs only as themselves"):
        ana.scheduler.submit_job({"user": "bob", "tasks": [{"command": ["true"]}]})


def test_env_values_are_shown_to_the_owner_and_wranglers_only(farm: Farm) -> None:
    job = queued_job(login(farm, "bob"))
    task_id = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]["id"]
    assert login(farm, "bob").scheduler.get_task(task_id)["env"] == {"API_KEY": "s3cret"}
    assert login(farm, "wendy").scheduler.get_task(task_id)["env"] == {"API_KEY": "s3cret"}
    assert login(farm, "ana").scheduler.get_task(task_id)["env"] == {"API_KEY": None}
    assert login(farm, "vic").scheduler.get_job(job["id"])["tasks"][0]["env"] == {"API_KEY": None}


def test_the_worker_credential_cannot_submit_and_a_person_cannot_claim(farm: Farm) -> None:
    worker = farm.client(farm.credentials.worker_token)
    with pytest.raises(PermissionDenied, match="needs the artist role"):
        queued_job(worker)
    job = queued_job(login(farm, "ana"))
    task = farm.rpc.scheduler.get_job(job["id"])["tasks"][0]
    for person in (login(farm, "ana"), login(farm, "wendy"), farm.client(
            farm.credentials.admin_token)):
        with pytest.raises(PermissionDenied, match="needs the worker credential"):
            person.scheduler.claim_task(task["id"], task["attempt"], "fake-worker")
        with pytest.raises(PermissionDenied, match="needs the worker credential"):
            person.registry.register_worker("fake-worker", "h", "cpu", ["normal"])
    assert farm.rpc.scheduler.get_task(task["id"])["state"] != "running"


def corral(farm: Farm, home: Path, *args: str, stdin: str | None = None) -> Any:
    done = subprocess.run([sys.executable, "-m", "services.cli", *args, "--config", str(CONFIG)],
                          env={**farm.env, "XDG_CONFIG_HOME": str(home)}, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_the_audit_log_shows_who_cancelled_a_job_from_the_cli(farm: Farm, tmp_path: Path) -> None:
    home = tmp_path / "ana-config"
    corral(farm, home, "login", "ana", "--password-stdin", stdin=PASSWORD + "\n")
    submitted = json.loads(corral(farm, home, "submit", "--json", "--", "sleep", "60").stdout)
    assert submitted["user"] == "ana"
    corral(farm, home, "cancel", str(submitted["id"]))
    # An administrator (here the local farm's own credential: nobody logged in) reads the log.
    entries = json.loads(corral(farm, tmp_path / "admin-config", "audit", "--actor", "ana",
                                "--json").stdout)
    actions = [(e["action"], e["target"], e["role"], e["service"]) for e in entries]
    assert actions[:2] == [("cancel_job", f"job {submitted['id']}", "artist", "scheduler"),
                           ("submit_job", f"job {submitted['id']}", "artist", "scheduler")]
    assert entries[0]["origin"].startswith("cli ")


def test_an_artist_cannot_read_the_audit_log(farm: Farm) -> None:
    with pytest.raises(PermissionDenied):
        login(farm, "ana").registry.list_audit()

