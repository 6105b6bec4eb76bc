"""Where a process finds the farm's secret and the token it presents: config, a login, or the local farm.

A studio sets `CORRAL.secret` (the same on every service), gives workers and pools a worker
credential (`CORRAL.worker_token`) and people their own tokens (`corral login`). A local farm needs
none of that: `corral up` makes a secret and two credentials in its data folder, readable only by
their owner, which every process reading the same config then finds:

    <data folder>/secret                    the farm's signing secret
    <data folder>/credentials/admin.token   what the CLI presents when nobody logged in
    <data folder>/credentials/worker.token  what workers and pools present

`corral login` keeps its token in the user's config folder ($XDG_CONFIG_HOME/corral/login.json,
by default ~/.config/corral/login.json) with the broker it was issued for, so a login to a studio
farm is not presented to a local one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.errors import ConfigError, Unauthenticated
from shared.identity import MIN_SECRET_BYTES, Role, issue_token, new_secret, read_claims

LOCAL_ADMIN = "admin"
"""The local farm's own administrator (the CLI's user when nobody logged in)."""
LOCAL_WORKER = "farm-worker"
"""The user the local farm's worker credential names."""


@dataclass(frozen=True)
class LocalCredentials:
    secret: str
    admin_token: str
    worker_token: str


def _secret_path(settings: Settings) -> Path:
    return settings.data_dir / "secret"


def _credential_path(settings: Settings, name: str) -> Path:
    return settings.data_dir / "credentials" / f"{name}.token"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def farm_secret(settings: Settings) -> str:
    """The secret that signs and verifies the farm's tokens; ConfigError when there is none."""
    secret = settings.secret or _read(_secret_path(settings))
    if not secret:
        raise ConfigError(
            f"CORRAL.secret: no farm secret (set CORRAL_SECRET to at least {MIN_SECRET_BYTES} "
            f"characters, or run `corral up`, which makes one in {settings.data_dir})")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"CORRAL.secret: must be at least {MIN_SECRET_BYTES} characters long")
    return secret


def ensure_local_credentials(settings: Settings) -> LocalCredentials:
    """The local farm's secret and credentials, made in its data folder the first time.

    A secret given by config is used as it is (and the credentials signed with it); credentials
    signed with another secret (the data folder of an older farm) are made anew.
    """
    if not settings.secret and _read(_secret_path(settings)) is None:
        _write_private(_secret_path(settings), new_secret() + "\n")
    secret = farm_secret(settings)
    tokens: dict[str, str] = {}
    for name, user, role in (("admin", LOCAL_ADMIN, Role.ADMIN),
                             ("worker", LOCAL_WORKER, Role.WORKER)):
        path = _credential_path(settings, name)
        token = _read(path)
        try:
            read_claims(secret, token)
        except Unauthenticated:
            token = issue_token(secret, user, role, token_id=f"local-{name}")
            _write_private(path, token + "\n")
        assert token is not None
        tokens[name] = token
    return LocalCredentials(secret, tokens["admin"], tokens["worker"])


def worker_credential(settings: Settings) -> str:
    """The token a worker or pool presents: config, else the local farm's worker credential."""
    token = settings.worker_token or _read(_credential_path(settings, "worker"))
    if not token:
        raise ConfigError("CORRAL.worker_token: no worker credential (set CORRAL_WORKER_TOKEN "
                          "to a token of a user whose role is worker, or run `corral up`)")
    return token


def login_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME") or Path.home()) / ".config")
    return base / "corral" / "login.json"


def broker_address(amqp_uri: str) -> str:
    """The broker and vhost of a URI, without its credentials: what a login is kept for (every
    node's, on a cluster)."""
    return ";".join(part.split("@")[-1].rstrip("/") for part in amqp_uri.split(";"))


def save_login(settings: Settings, login: Mapping[str, Any],
               environ: Mapping[str, str] | None = None) -> Path:
    """Keep `corral login`'s answer (token, user, role, expires_at) for this farm's broker."""
    path = login_path(environ)
    _write_private(path, json.dumps({**login, "broker": broker_address(settings.amqp_uri)}) + "\n")
    return path


def read_login(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The kept login for this farm's broker, or None."""
    text = _read(login_path(environ))
    if text is None:
        return None
    try:
        login = json.loads(text)
    except ValueError:
        return None
    if not isinstance(login, dict) or login.get("broker") != broker_address(settings.amqp_uri):
        return None
    return login


def forget_login(environ: Mapping[str, str] | None = None) -> bool:
    try:
        login_path(environ).unlink()
        return True
    except FileNotFoundError:
        return False


def presents_local_admin(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    """True when the CLI's token is the local farm's admin credential (nobody logged in)."""
    token = cli_token(settings, environ)
    return token is not None and token == _read(_credential_path(settings, "admin"))


def cli_token(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """The token the CLI presents: CORRAL_TOKEN, else `corral login`'s, else the local admin's."""
    if settings.token:
        return settings.token
    login = read_login(settings, environ)
    if login and login.get("token"):
        return str(login["token"])
    return _read(_credential_path(settings, "admin"))
