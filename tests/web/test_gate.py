"""Deny by default: every route that changes something refuses anonymous people and viewers.

The app's URL map is walked, so a route added later is checked without anyone listing it. No
broker is needed: the refusals come before any call to a service.
"""

import re

import pytest
from flask import Flask

from shared.config import load_settings
from shared.identity import Role, issue_token
from tests.web.conftest import FARM_SECRET
from web import create_app

SAFE = {"GET", "HEAD", "OPTIONS"}
PUBLIC = {"pages.login", "pages.logout", "api.api_login"}
"""Mutating routes anyone may call: logging in and out, nothing else."""


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("CORRAL_SECRET", FARM_SECRET)
    # Nothing listens here: a request that got past the gate would fail with 503, not 401/403.
    monkeypatch.setenv("CORRAL_AMQP_URI", "amqp://guest:guest@127.0.0.1:1/")
    return create_app(load_settings())


def mutating_routes(app: Flask) -> list[tuple[str, str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - SAFE):
            path = re.sub(r"<int:\w+>", "1", rule.rule)
            path = re.sub(r"<(?:path:)?\w+>", "x", path)
            routes.append((rule.endpoint, method, path))
    return routes


def test_the_walk_finds_the_mutating_routes(app: Flask) -> None:
    endpoints = {endpoint for endpoint, _, _ in mutating_routes(app)}
    assert {"api.submit", "api.cancel_job", "api.upload", "pages.job_action",
            "pages.worker_action"} <= endpoints


def test_every_mutating_route_refuses_anonymous_requests(app: Flask) -> None:
    client = app.test_client()
    for endpoint, method, path in mutating_routes(app):
        if endpoint in PUBLIC:
            continue
        reply = client.open(path, method=method, json={}, headers={"Accept": "application/json"})
        assert reply.status_code == 401, (endpoint, method, path, reply.status_code, reply.data)


def test_every_mutating_route_refuses_a_viewer(app: Flask) -> None:
    client = app.test_client()
    token = issue_token(FARM_SECRET, "vic", Role.VIEWER, ttl_seconds=600)
    for endpoint, method, path in mutating_routes(app):
        if endpoint in PUBLIC:
            continue
        reply = client.open(path, method=method, json={},
                            headers={"Authorization": f"Bearer {token}",
                                     "Accept": "application/json"})
        assert reply.status_code == 403, (endpoint, method, path, reply.status_code, reply.data)


def test_a_page_action_by_someone_not_logged_in_asks_for_login(app: Flask) -> None:
    reply = app.test_client().post("/jobs/7/action", data={"op": "cancel", "next": "/jobs/7"})
    assert reply.status_code == 302
    assert reply.headers["Location"].startswith("/login?next=/jobs/7")


def test_a_forged_or_expired_token_is_refused(app: Flask) -> None:
    client = app.test_client()
    forged = issue_token("another-farm-" + "x" * 32, "eve", Role.ADMIN)
    expired = issue_token(FARM_SECRET, "ana", Role.ARTIST, ttl_seconds=1, now=1000.0)
    for token in (forged, expired):
        reply = client.post("/api/v1/jobs/1/cancel", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 401


def test_a_cookie_session_post_without_its_csrf_token_is_refused(app: Flask) -> None:
    client = app.test_client()
    with client.session_transaction() as session:
        session["token"] = issue_token(FARM_SECRET, "ana", Role.ARTIST, ttl_seconds=600)
        session["csrf_token"] = "the-right-one"
    reply = client.post("/jobs/1/action", data={"op": "cancel", "csrf_token": "wrong"},
                        headers={"Accept": "application/json"})
    assert reply.status_code == 403 and b"CSRF" in reply.data


def test_the_session_cookie_is_httponly_and_samesite(app: Flask) -> None:
    client = app.test_client()
    reply = client.get("/login")
    cookie = reply.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_the_monitor_refuses_to_start_without_a_farm_secret(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path) -> None:
    from shared.errors import ConfigError

    monkeypatch.delenv("CORRAL_SECRET", raising=False)
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="secret"):
        create_app(load_settings(), dev=False)
    monkeypatch.setenv("CORRAL_SECRET", "change-me")
    with pytest.raises(ConfigError, match="secret"):
        create_app(load_settings(), dev=False)
    assert create_app(load_settings(), dev=True) is not None
