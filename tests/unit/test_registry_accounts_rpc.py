"""The registry's account methods: only an administrator manages accounts, anyone may log in."""

from pathlib import Path

import pytest
from nameko.testing.services import worker_factory

from services.registry import accounts
from services.registry.service import RegistryService, RegistryState
from shared.db import Store
from shared.errors import PermissionDenied, Unauthenticated
from shared.identity import Role, TokenVerifier
from tests.unit.access_helpers import SECRET, caller, settings_with_secret, token_for


def registry(tmp_path: Path, store: Store, token: str | None) -> RegistryService:
    settings = settings_with_secret(tmp_path)
    return worker_factory(RegistryService, core=RegistryState(settings, store),
                          access=caller(settings, "registry", token, accounts.AUDIT))


def test_an_admin_creates_a_user_who_then_logs_in(tmp_path: Path, registry_store: Store) -> None:
    admin = registry(tmp_path, registry_store, token_for("root", Role.ADMIN))
    admin.create_user("ana", "artist", "correct horse")
    login = registry(tmp_path, registry_store, None).authenticate("ana", "correct horse")
    assert TokenVerifier(SECRET).verify(login["token"]).role is Role.ARTIST
    assert [user["username"] for user in admin.list_users()] == ["ana"]


@pytest.mark.parametrize("method", ["create_user", "list_users", "remove_user", "create_token",
                                    "revoke_token", "list_tokens", "revoked_tokens"])
def test_account_methods_refuse_everyone_but_an_admin(tmp_path: Path, registry_store: Store,
                                                      method: str) -> None:
    arguments = {"create_user": ("eve", "admin", None), "remove_user": ("ana",),
                 "create_token": ("ana", "x", 60), "revoke_token": ("t",)}.get(method, ())
    for role in (Role.VIEWER, Role.ARTIST, Role.WRANGLER, Role.WORKER):
        service = registry(tmp_path, registry_store, token_for("someone", role))
        with pytest.raises(PermissionDenied, match="needs the admin role"):
            getattr(service, method)(*arguments)
    assert accounts.list_users(registry_store) == []


def test_account_methods_refuse_a_call_without_a_token(tmp_path: Path,
                                                       registry_store: Store) -> None:
    with pytest.raises(Unauthenticated, match="no token"):
        registry(tmp_path, registry_store, None).create_user("eve", "admin", None)


def test_a_revoked_token_is_refused_at_once_by_the_registry_that_revoked_it(
        tmp_path: Path, registry_store: Store) -> None:
    admin = registry(tmp_path, registry_store, token_for("root", Role.ADMIN))
    admin.create_user("pipeline", "artist", None)
    issued = admin.create_token("pipeline", "nightly", 3600)
    admin.revoke_token(issued["token_id"])
    assert admin.access.revoked_ids() == frozenset({issued["token_id"]})
    assert admin.revoked_tokens() == [issued["token_id"]]


def test_account_changes_are_in_the_registry_audit_log_with_their_actor(
        tmp_path: Path, registry_store: Store) -> None:
    admin = registry(tmp_path, registry_store, token_for("root", Role.ADMIN))
    admin.create_user("ana", "artist", "correct horse")
    issued = admin.create_token("ana", "script", None)
    entries = admin.list_audit()
    assert [(e["actor"], e["action"], e["target"], e["origin"]) for e in entries] == [
        ("root", "create_token", f"token {issued['token_id']} of ana", "unit test"),
        ("root", "create_user", "user ana", "unit test")]
    assert "password" not in entries[1]["detail"] and entries[1]["detail"]["role"] == "artist"
    assert issued["token"] not in str(entries)
