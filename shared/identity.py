"""Who is calling: roles, the farm's signed tokens, and their verification by any service on its own.

Accounts (users with argon2-hashed passwords, roles, API tokens and their revocations) are owned by
the registry service, in its own database. A token is not looked up anywhere: it is signed with
HMAC-SHA256 under the farm's secret (config `CORRAL.secret`) and carries its user, role, token id
and expiry, so every service verifies it itself, without a round trip. What a signature cannot
say is that a token was revoked since: the registry announces each revocation (`token_revoked`)
and every service also re-reads the list of revoked ids from it every few seconds, so a service
that starts later knows them too (see `TokenVerifier.set_revoked`).

A token travels in nameko's context data under `CONTEXT_KEY`, so a bare
`ClusterRpcProxy(config, context_data={CONTEXT_KEY: token})` carries it on every call, and a
service calling another passes its caller's token on. Workers and pools hold the farm's worker
credential: a token whose role is `worker`, accepted only by the worker-facing methods.

    corral.<base64url JSON claims>.<base64url HMAC-SHA256 of "corral.<claims>">
    claims: {"v": 1, "sub": user, "role": role, "jti": token id, "exp": epoch seconds or null}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nameko.constants import AUTH_TOKEN_CONTEXT_KEY
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import Unauthenticated

CONTEXT_KEY = AUTH_TOKEN_CONTEXT_KEY
"""The nameko context-data key ("auth_token") that carries the caller's token on every call."""

ORIGIN_KEY = "corral_origin"
"""Optional context-data key saying where a call comes from (`cli@render-07`, `web 10.1.2.3`), for
the audit log; without it the audit names the first entry of nameko's call id stack."""

TOKEN_PREFIX = "corral"
MIN_SECRET_BYTES = 32
"""A farm secret shorter than this is refused: it signs every token of the farm."""


class Role(StrEnum):
    """What a token may do. People's roles are ordered by power; the worker credential is apart."""

    VIEWER = "viewer"  # reads everything
    ARTIST = "artist"  # submits, and acts on their own jobs
    WRANGLER = "wrangler"  # acts on every job, drains workers, sets licence counts
    ADMIN = "admin"  # users and tokens, the audit log
    WORKER = "worker"  # the farm's workers and pools: claim, renew, finish, register...

    @property
    def power(self) -> int:
        """People's roles from 1 (viewer) to 4 (admin); the worker credential has 0."""
        return _POWER[self]

    @property
    def is_person(self) -> bool:
        return self is not Role.WORKER

    def at_least(self, other: Role) -> bool:
        """True when this role may do what `other` may.

        A person's role includes every weaker person's role; the worker credential is no person,
        so it is at least only itself, and no person is at least a worker.
        """
        if self is Role.WORKER or other is Role.WORKER:
            return self is other
        return self.power >= other.power


_POWER = {Role.WORKER: 0, Role.VIEWER: 1, Role.ARTIST: 2, Role.WRANGLER: 3, Role.ADMIN: 4}

PEOPLE_ROLES = tuple(role for role in Role if role.is_person)


@dataclass(frozen=True)
class Identity:
    """A verified caller: the user, their role, and the id of the token they called with."""

    user: str
    role: Role
    token_id: str

    def at_least(self, role: Role) -> bool:
        return self.role.at_least(role)


@dataclass(frozen=True)
class TokenClaims:
    """What a token says about itself once its signature checks out."""

    identity: Identity
    expires_at: float | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the farm secret must be at least {MIN_SECRET_BYTES} bytes long")
    return key


def _signature(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())


def new_token_id() -> str:
    return secrets.token_hex(8)


def new_secret() -> str:
    """A fresh farm secret (64 hex digits)."""
    return secrets.token_hex(32)


def issue_token(secret: str | bytes, user: str, role: Role | str, token_id: str | None = None,
                ttl_seconds: float | None = None, now: float | None = None) -> str:
    """A token for `user` with `role`, valid for `ttl_seconds` (None: until revoked)."""
    key = _secret_bytes(secret)
    if ttl_seconds is not None and ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued = time.time() if now is None else now
    claims = {"v": 1, "sub": user, "role": str(Role(role)), "jti": token_id or new_token_id(),
              "exp": None if ttl_seconds is None else issued + ttl_seconds}
    signed = f"{TOKEN_PREFIX}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signed}.{_signature(key, signed)}"


def read_claims(secret: str | bytes, token: object, now: float | None = None) -> TokenClaims:
    """The claims of a token whose signature and expiry check out; Unauthenticated otherwise.

    Revocation is not checked here: that is what a TokenVerifier adds.
    """
    key = _secret_bytes(secret)
    if not isinstance(token, str) or not token:
        raise Unauthenticated("no token: log in with `corral login`, or pass a token in the "
                              f"call's context data under {CONTEXT_KEY!r}")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise Unauthenticated("the token is not a Corral token")
    signed = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_signature(key, signed), parts[2]):
        raise Unauthenticated("the token's signature does not match this farm's secret")
    try:
        raw = json.loads(_unb64(parts[1]))
        identity = Identity(user=str(raw["sub"]), role=Role(raw["role"]), token_id=str(raw["jti"]))
        expires_at = None if raw.get("exp") is None else float(raw["exp"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise Unauthenticated("the token's claims cannot be read") from None
    if expires_at is not None and expires_at <= (time.time() if now is None else now):
        raise Unauthenticated(f"the token {identity.token_id} of {identity.user} has expired")
    return TokenClaims(identity, expires_at)


class TokenVerifier:
    """Checks tokens against the farm's secret and the ids revoked so far; one per process."""

    def __init__(self, secret: str | bytes, revoked: Iterable[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = _secret_bytes(secret)
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset(revoked)

    def verify(self, token: object) -> Identity:
        """The caller a token names; Unauthenticated when forged, expired, revoked or absent."""
        identity = read_claims(self._secret, token, self._clock()).identity
        if identity.token_id in self._revoked:
            raise Unauthenticated(f"the token {identity.token_id} of {identity.user} was revoked")
        return identity

    @property
    def revoked(self) -> frozenset[str]:
        return self._revoked

    def revoke(self, token_id: str) -> None:
        """Refuse this token id from now on (a `token_revoked` event)."""
        with self._lock:
            self._revoked = self._revoked | {token_id}

    def set_revoked(self, token_ids: Iterable[str]) -> None:
        """Replace the revoked ids with the registry's whole list (the periodic refresh).

        The list only grows at the registry, so an id announced by event but not yet in a list
        read just before is kept: a refresh never lets a revoked token back in.
        """
        with self._lock:
            self._revoked = self._revoked | frozenset(token_ids)


class TokenRevoked(BaseModel):
    """The payload of the registry's `token_revoked` event."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token_id: str = Field(min_length=1)


def describe(identity: Identity | None) -> dict[str, Any]:
    """An identity as plain JSON, for replies and the audit log."""
    if identity is None:
        return {"user": None, "role": None, "token_id": None}
    return {"user": identity.user, "role": str(identity.role), "token_id": identity.token_id}
