"""The registry's accounts: users with hashed passwords, roles, tokens it issues, lists and revokes."""

import pytest
from sqlalchemy import select

from services.registry import accounts
from shared.db import Store
from shared.errors import InvalidSpec, InvalidState, NotFound, Unauthenticated
from shared.identity import Role, TokenVerifier

SECRET = "k" * 40


def test_a_user_logs_in_with_the_right_password_and_gets_a_token_naming_them(
        registry_store: Store) -> None:
    accounts.create_user(registry_store, "ana", "artist", "correct horse")
    login = accounts.authenticate(registry_store, SECRET, "ana", "correct horse", 3600)
    identity = TokenVerifier(SECRET).verify(login["token"])
    assert (identity.user, identity.role, login["role"]) == ("ana", Role.ARTIST, "artist")
    assert login["expires_at"] is not None


@pytest.mark.parametrize(("username", "password"), [("ana", "wrong password"),
                                                    ("nobody", "correct horse"),
                                                    ("pipeline", "anything at all")])
def test_a_wrong_password_or_unknown_user_or_token_only_account_cannot_log_in(
        registry_store: Store, username: str, password: str) -> None:
    accounts.create_user(registry_store, "ana", "artist", "correct horse")
    accounts.create_user(registry_store, "pipeline", "artist", None)
    with pytest.raises(Unauthenticated, match="wrong user name or password"):
        accounts.authenticate(registry_store, SECRET, username, password, 3600)


def test_passwords_are_stored_hashed_with_argon2(registry_store: Store) -> None:
    accounts.create_user(registry_store, "ana", "artist", "correct horse")
    with registry_store.read() as session:
        stored = session.scalars(select(accounts.Account.password_hash)).one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored


@pytest.mark.parametrize(("username", "role", "password", "field"), [
    ("", "artist", None, "username"), ("a b", "artist", None, "username"),
    ("ana", "boss", None, "role"), ("ana", "artist", "short", "password")])
def test_bad_accounts_are_refused_naming_the_field(registry_store: Store, username: str, role: str,
                                                   password: str | None, field: str) -> None:
    with pytest.raises(InvalidSpec, match=f"^{field}:"):
        accounts.create_user(registry_store, username, role, password)
    assert accounts.list_users(registry_store) == []


def test_a_user_is_created_once(registry_store: Store) -> None:
    accounts.create_user(registry_store, "ana", "artist", None)
    with pytest.raises(InvalidState, match="already exists"):
        accounts.create_user(registry_store, "ana", "admin", None)
    assert [u["role"] for u in accounts.list_users(registry_store)] == ["artist"]


def test_an_api_token_is_listed_without_its_secret_and_revoking_it_lists_its_id(
        registry_store: Store) -> None:
    accounts.create_user(registry_store, "pipeline", "artist", None)
    issued = accounts.create_token(registry_store, SECRET, "pipeline", "nightly", 86400)
    assert TokenVerifier(SECRET).verify(issued["token"]).token_id == issued["token_id"]
    (listed,) = accounts.list_tokens(registry_store, "pipeline")
    assert "token" not in listed and listed["active"] and listed["name"] == "nightly"
    revoked, emitted = accounts.revoke_token(registry_store, issued["token_id"])
    assert not revoked["active"]
    assert emitted == [("token_revoked", {"token_id": issued["token_id"]})]
    assert accounts.revoked_ids(registry_store) == [issued["token_id"]]
    assert accounts.revoke_token(registry_store, issued["token_id"])[1] == []  # once is enough


def test_removing_a_user_revokes_every_token_they_hold(registry_store: Store) -> None:
    accounts.create_user(registry_store, "ana", "artist", "correct horse")
    login = accounts.authenticate(registry_store, SECRET, "ana", "correct horse", 3600)
    api = accounts.create_token(registry_store, SECRET, "ana", "script", None)
    removed, emitted = accounts.remove_user(registry_store, "ana")
    assert sorted(removed["revoked"]) == sorted([login["token_id"], api["token_id"]])
    assert len(emitted) == 2
    assert sorted(accounts.revoked_ids(registry_store)) == sorted(removed["revoked"])
    assert accounts.list_users(registry_store) == []


def test_tokens_of_unknown_users_and_bad_lifetimes_are_refused(registry_store: Store) -> None:
    with pytest.raises(NotFound):
        accounts.create_token(registry_store, SECRET, "nobody", "x", 60)
    accounts.create_user(registry_store, "ana", "artist", None)
    for ttl in (0, -5, float("inf"), "60", True):
        with pytest.raises(InvalidSpec, match="^ttl_seconds:"):
            accounts.create_token(registry_store, SECRET, "ana", "x", ttl)
    with pytest.raises(NotFound):
        accounts.revoke_token(registry_store, "no-such-id")


def test_an_expired_revoked_token_leaves_the_revoked_list(registry_store: Store) -> None:
    accounts.create_user(registry_store, "ana", "artist", None)
    short = accounts.create_token(registry_store, SECRET, "ana", "short", 0.05)
    accounts.revoke_token(registry_store, short["token_id"])
    import time

    time.sleep(0.1)
    assert accounts.revoked_ids(registry_store) == []
