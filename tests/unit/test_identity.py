"""Roles, signed tokens and their verification: forged, expired and revoked tokens are refused."""

import base64
import json
from pathlib import Path

import pytest

from shared.config import settings_from_mapping
from shared.credentials import (
    LOCAL_ADMIN,
    cli_token,
    ensure_local_credentials,
    farm_secret,
    read_login,
    save_login,
    worker_credential,
)
from shared.errors import ConfigError, CorralError, PermissionDenied, Unauthenticated
from shared.identity import Identity, Role, TokenVerifier, issue_token, read_claims

SECRET = "s" * 40


def test_people_roles_include_every_weaker_role_and_the_worker_role_stands_apart() -> None:
    assert Role.ADMIN.at_least(Role.WRANGLER) and Role.WRANGLER.at_least(Role.ARTIST)
    assert Role.ARTIST.at_least(Role.VIEWER) and not Role.VIEWER.at_least(Role.ARTIST)
    assert not Role.WORKER.at_least(Role.VIEWER)
    assert not Role.ADMIN.at_least(Role.WORKER)
    assert Role.WORKER.at_least(Role.WORKER)


def test_a_token_names_its_user_role_and_id() -> None:
    token = issue_token(SECRET, "ana", Role.ARTIST, token_id="t1", ttl_seconds=60)
    assert TokenVerifier(SECRET).verify(token) == Identity("ana", Role.ARTIST, "t1")


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = issue_token("x" * 40, "ana", Role.ADMIN)
    with pytest.raises(Unauthenticated, match="signature"):
        TokenVerifier(SECRET).verify(token)


def test_a_token_whose_claims_were_changed_is_refused() -> None:
    prefix, claims, signature = issue_token(SECRET, "ana", Role.ARTIST).split(".")
    raw = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    raw["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(raw).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated, match="signature"):
        TokenVerifier(SECRET).verify(f"{prefix}.{forged}.{signature}")


def test_an_expired_token_is_refused() -> None:
    token = issue_token(SECRET, "ana", Role.ARTIST, ttl_seconds=10, now=1000.0)
    assert read_claims(SECRET, token, now=1009.0).expires_at == 1010.0
    with pytest.raises(Unauthenticated, match="expired"):
        TokenVerifier(SECRET, clock=lambda: 1010.5).verify(token)


@pytest.mark.parametrize("token", [None, "", 42, "nonsense", "corral.e30.abc", "a.b.c.d"])
def test_missing_or_malformed_tokens_are_refused_with_a_corral_error(token: object) -> None:
    with pytest.raises(Unauthenticated):
        TokenVerifier(SECRET).verify(token)


def test_a_revoked_token_is_refused_and_a_refresh_never_lets_it_back() -> None:
    token = issue_token(SECRET, "ana", Role.ARTIST, token_id="t1")
    verifier = TokenVerifier(SECRET)
    verifier.revoke("t1")
    with pytest.raises(Unauthenticated, match="revoked"):
        verifier.verify(token)
    verifier.set_revoked(["t2"])  # a list read before t1's revocation reached the registry's
    with pytest.raises(Unauthenticated, match="revoked"):
        verifier.verify(token)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        issue_token("short", "ana", Role.ADMIN)


def test_identity_errors_are_corral_errors() -> None:
    assert issubclass(Unauthenticated, CorralError) and issubclass(PermissionDenied, CorralError)


def _settings(tmp_path: Path, **corral: object):  # type: ignore[no-untyped-def]
    return settings_from_mapping({"CORRAL": {"data_dir": str(tmp_path / "data"), **corral}})


def test_a_process_without_a_secret_is_told_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CORRAL_SECRET"):
        farm_secret(_settings(tmp_path))
    with pytest.raises(ConfigError, match="at least 32"):
        farm_secret(_settings(tmp_path, secret="tiny"))


def test_the_local_farm_makes_its_secret_and_credentials_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ensure_local_credentials(settings)
    assert ensure_local_credentials(settings) == first
    assert (settings.data_dir / "secret").stat().st_mode & 0o077 == 0
    verifier = TokenVerifier(farm_secret(settings))
    assert verifier.verify(first.admin_token).role is Role.ADMIN
    assert verifier.verify(worker_credential(settings)).role is Role.WORKER
    assert verifier.verify(cli_token(settings, {"HOME": str(tmp_path)})).user == LOCAL_ADMIN


def test_credentials_of_another_secret_are_made_anew(tmp_path: Path) -> None:
    old = ensure_local_credentials(_settings(tmp_path))
    new = ensure_local_credentials(_settings(tmp_path, secret="n" * 40))
    assert new.admin_token != old.admin_token
    assert TokenVerifier("n" * 40).verify(new.worker_token).role is Role.WORKER


def test_a_login_is_presented_only_to_the_broker_it_was_made_for(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    studio = settings_from_mapping({"AMQP_URI": "amqp://u:p@studio:5672/", "CORRAL": {
        "data_dir": str(tmp_path / "data")}})
    save_login(studio, {"token": "corral.a.b", "user": "ana"}, environ)
    assert cli_token(studio, environ) == "corral.a.b"
    assert read_login(_settings(tmp_path), environ) is None
    assert cli_token(_settings(tmp_path), environ) is None
    assert cli_token(_settings(tmp_path, token="corral.x.y"), environ) == "corral.x.y"
