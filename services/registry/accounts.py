"""The farm's accounts, owned by the registry: users, roles, argon2-hashed passwords, tokens, revocations.

Tokens are signed (shared.identity) so no service looks them up; the registry records each one it
issues (id, user, name, expiry; never the token itself) so that it can be listed and revoked, and
the ids revoked before their expiry are what every service re-reads (`revoked_ids`). Removing a
user revokes every token they hold.
"""

from __future__ import annotations

import re
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import or_, select
from sqlmodel import Field, col

from services.registry.store import AUDIT, Emitted, RegistryTable
from shared import events
from shared.db import Store
from shared.errors import InvalidSpec, InvalidState, NotFound, Unauthenticated
from shared.identity import Role, issue_token, new_token_id
from shared.spec import NAME_PATTERN

__all__ = ["AUDIT", "Account", "IssuedToken"]

MIN_PASSWORD_CHARS = 8
_hasher = PasswordHasher()
# Checked against when the user does not exist, so an unknown name takes as long as a wrong password.
_UNKNOWN_USER_HASH = _hasher.hash("no such user: this hash is never matched")


class Account(RegistryTable, table=True):
    username: str = Field(primary_key=True)
    role: str
    password_hash: str | None = None  # None: the account logs in only with tokens (a pipeline)
    created_at: float


class IssuedToken(RegistryTable, table=True):
    token_id: str = Field(primary_key=True)
    username: str = Field(index=True)
    role: str
    name: str
    kind: str  # "login" (corral login, the monitor's page) or "api" (corral token create)
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = Field(default=None, index=True)


def _username(username: Any) -> str:
    if not isinstance(username, str) or not re.fullmatch(NAME_PATTERN, username) \
            or len(username) > 64:
        raise InvalidSpec(f"username: {username!r} is not a user name (a letter or digit, then "
                          "up to 63 letters, digits or _.-)")
    return username


def _role(role: Any) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidSpec(f"role: {role!r} is not one of {', '.join(r.value for r in Role)}") \
            from None


def _password(password: Any) -> str | None:
    if password is None:
        return None
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise InvalidSpec(f"password: must be a text of at least {MIN_PASSWORD_CHARS} characters")
    return password


def _ttl(ttl_seconds: Any) -> float | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float) \
            or not 0 < ttl_seconds <= 10 * 365 * 86400:
        raise InvalidSpec("ttl_seconds: must be a number of seconds between 0 and ten years "
                          f"(or null for a token that lasts until revoked), got {ttl_seconds!r}")
    return float(ttl_seconds)


def account_dict(account: Account, active_tokens: int = 0) -> dict[str, Any]:
    return {"username": account.username, "role": account.role,
            "has_password": account.password_hash is not None,
            "created_at": account.created_at, "active_tokens": active_tokens}


def token_dict(token: IssuedToken, now: float) -> dict[str, Any]:
    data = token.model_dump(mode="json")
    data["active"] = token.revoked_at is None and (token.expires_at is None
                                                   or token.expires_at > now)
    return data


def create_user(store: Store, username: str, role: str, password: str | None) -> dict[str, Any]:
    name, kind, secret = _username(username), _role(role), _password(password)
    hashed = None if secret is None else _hasher.hash(secret)
    with store.write() as session:
        if session.get(Account, name) is not None:
            raise InvalidState(f"user {name} already exists")
        account = Account(username=name, role=kind, password_hash=hashed,
                          created_at=store.now(session))
        session.add(account)
        return account_dict(account)


def list_users(store: Store) -> list[dict[str, Any]]:
    with store.read() as session:
        now = store.now(session)
        accounts = session.scalars(select(Account).order_by(Account.username)).all()
        tokens = session.scalars(select(IssuedToken).where(
            col(IssuedToken.revoked_at).is_(None))).all()
        active: dict[str, int] = {}
        for token in tokens:
            if token.expires_at is None or token.expires_at > now:
                active[token.username] = active.get(token.username, 0) + 1
        return [account_dict(a, active.get(a.username, 0)) for a in accounts]


def _revoke(token: IssuedToken, now: float) -> list[tuple[str, dict[str, Any]]]:
    if token.revoked_at is not None:
        return []
    token.revoked_at = now
    return [(events.TOKEN_REVOKED, {"token_id": token.token_id})]


def remove_user(store: Store, username: str) -> tuple[dict[str, Any], Emitted]:
    """Remove a user and revoke every token they hold."""
    with store.write() as session:
        now = store.now(session)
        account = session.get(Account, str(username))
        if account is None:
            raise NotFound(f"no user {username}")
        emitted: Emitted = []
        for token in session.scalars(select(IssuedToken).where(
                col(IssuedToken.username) == account.username)).all():
            emitted += _revoke(token, now)
        session.delete(account)
        return ({"username": account.username, "revoked": [p["token_id"] for _, p in emitted]},
                emitted)


def _issue(session: Any, secret: str, account: Account, name: str, kind: str,
           ttl_seconds: float | None, now: float) -> dict[str, Any]:
    token_id = new_token_id()
    token = issue_token(secret, account.username, account.role, token_id, ttl_seconds, now)
    row = IssuedToken(token_id=token_id, username=account.username, role=account.role, name=name,
                      kind=kind, created_at=now,
                      expires_at=None if ttl_seconds is None else now + ttl_seconds)
    session.add(row)
    return {"token": token, "token_id": token_id, "user": account.username,
            "role": account.role, "name": name, "expires_at": row.expires_at}


def authenticate(store: Store, secret: str, username: str, password: str,
                 ttl_seconds: float) -> dict[str, Any]:
    """A login token for the right password; one message for every wrong answer."""
    refused = Unauthenticated("wrong user name or password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise refused
    with store.write() as session:
        account = session.get(Account, username)
        try:
            _hasher.verify(account.password_hash if account and account.password_hash
                           else _UNKNOWN_USER_HASH, password)
        except (VerificationError, InvalidHashError):
            raise refused from None
        if account is None or account.password_hash is None:
            raise refused
        if _hasher.check_needs_rehash(account.password_hash):
            account.password_hash = _hasher.hash(password)
        issued = _issue(session, secret, account, "login", "login", ttl_seconds,
                        store.now(session))
        return {key: issued[key] for key in ("token", "token_id", "user", "role", "expires_at")}


def create_token(store: Store, secret: str, username: str, name: str,
                 ttl_seconds: float | None) -> dict[str, Any]:
    """An API token for a user (a pipeline's, a worker credential): shown once, never stored."""
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
        raise InvalidSpec(f"name: {name!r} must be 1 to 100 printable characters")
    ttl = _ttl(ttl_seconds)
    with store.write() as session:
        account = session.get(Account, str(username))
        if account is None:
            raise NotFound(f"no user {username}")
        return _issue(session, secret, account, name, "api", ttl, store.now(session))


def revoke_token(store: Store, token_id: str) -> tuple[dict[str, Any], Emitted]:
    with store.write() as session:
        now = store.now(session)
        token = session.get(IssuedToken, str(token_id))
        if token is None:
            raise NotFound(f"no token {token_id}")
        emitted = _revoke(token, now)
        return token_dict(token, now), emitted


def list_tokens(store: Store, username: str | None = None) -> list[dict[str, Any]]:
    with store.read() as session:
        now = store.now(session)
        query = select(IssuedToken)
        if username is not None:
            query = query.where(col(IssuedToken.username) == str(username))
        rows = session.scalars(query.order_by(col(IssuedToken.created_at))).all()
        return [token_dict(row, now) for row in rows]


def revoked_ids(store: Store) -> list[str]:
    """Ids of tokens revoked before their expiry that have not expired since."""
    with store.read() as session:
        now = store.now(session)
        return list(session.scalars(select(col(IssuedToken.token_id)).where(
            col(IssuedToken.revoked_at).is_not(None),
            or_(col(IssuedToken.expires_at).is_(None), col(IssuedToken.expires_at) > now))).all())
