"""Who is asking, and may they: the monitor's one place for logins, tokens, roles and CSRF.

A person logs in on the page (the registry checks the password and issues a signed farm token,
kept in the session cookie) or calls the API with `Authorization: Bearer <token>`. The token is
verified here with the farm's secret and then travels on every RPC call made for that person, so
the service owning the thing checks it again and records it in its audit log.

Deny by default: a `before_request` hook refuses every request that is not a GET, HEAD or OPTIONS
from anyone below artist (unless its view is marked `public`), whatever the view itself checks,
so a route added later cannot forget it. Anonymous people may read when `web.public_read` says
so; their reads travel under the monitor's own viewer token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, current_app, g, request, session

from shared.errors import Unauthenticated
from shared.identity import Identity, Role, TokenVerifier, issue_token
from web.errors import HttpError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MONITOR_USER = "monitor"
"""The user of the monitor's own viewer token (anonymous reads, /metrics)."""
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

View = TypeVar("View", bound=Callable[..., Any])


def public(view: View) -> View:
    """Let anyone call this view, even with a mutating method (the login form, nothing else)."""
    view.corral_public = True  # type: ignore[attr-defined]
    return view


def csrf_exempt(view: View) -> View:
    """A JSON-only view no browser form can reach (the API's login): no CSRF token asked."""
    view.corral_csrf_exempt = True  # type: ignore[attr-defined]
    return view


def requires(role: Role) -> Callable[[View], View]:
    """Only people with at least `role` may call the view (recorded for the URL-map test)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            require(role)
            return view(*args, **kwargs)

        checked.corral_role = role  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate


class Auth:
    """The farm secret's verifier and the monitor's own token, kept on the app."""

    def __init__(self, secret: str, public_read: bool, session_seconds: float,
                 revocation_refresh_seconds: float) -> None:
        self.verifier = TokenVerifier(secret)
        self.secret = secret
        self.public_read = public_read
        self.session_seconds = session_seconds
        self.revocation_refresh_seconds = revocation_refresh_seconds
        self._monitor_token = ""
        self._monitor_expires = 0.0
        self._revoked_read_at = 0.0

    def refresh_revoked(self) -> None:
        """Re-read the revoked token ids from the registry now and then (it owns them).

        Reads the monitor answers without a service (a log, a download) are then refused for a
        revoked token too; calls to services are refused by the services themselves anyway.
        """
        now = time.monotonic()
        if now - self._revoked_read_at < self.revocation_refresh_seconds:
            return
        self._revoked_read_at = now
        # Only administrators may list revocations; the monitor holds the farm secret anyway.
        token = issue_token(self.secret, MONITOR_USER, Role.ADMIN, token_id="monitor-web-admin",
                            ttl_seconds=60)
        try:
            revoked = current_app.extensions["corral_rpc"].call("registry", "revoked_tokens",
                                                                token=token, timeout=1.0)
        except Exception:  # the registry is away: keep what we know, try again later
            return
        self.verifier.set_revoked(revoked)

    def monitor_token(self) -> str:
        """A short-lived viewer token for reads nobody logged in asked for."""
        now = time.time()
        if now > self._monitor_expires - 60:
            self._monitor_token = issue_token(self.secret, MONITOR_USER, Role.VIEWER,
                                              token_id="monitor-web", ttl_seconds=3600, now=now)
            self._monitor_expires = now + 3600
        return self._monitor_token


def _auth() -> Auth:
    auth: Auth = current_app.extensions["corral_auth"]
    return auth


def _presented_token() -> tuple[str | None, str]:
    """The token this request presents and how: ("...", "bearer"), ("...", "session") or none."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), "bearer"
    token = session.get("token")
    if isinstance(token, str) and token:
        return token, "session"
    return None, "none"


def identity() -> Identity | None:
    """The verified person behind this request, or None (anonymous, or an invalid token)."""
    if "corral_identity" not in g:
        token, how = _presented_token()
        g.corral_token = token
        g.corral_via = how
        g.corral_identity = None
        g.corral_token_error = None
        if token is not None:
            _auth().refresh_revoked()
            try:
                g.corral_identity = _auth().verifier.verify(token)
            except Unauthenticated as exc:
                g.corral_token_error = str(exc)
                if how == "session":
                    session.pop("token", None)  # expired or revoked: log in again
    found: Identity | None = g.corral_identity
    return found


def rpc_token() -> str | None:
    """The token an RPC call made for this request carries: the person's, or the monitor's."""
    if identity() is not None:
        token: str | None = g.corral_token
        return token
    return _auth().monitor_token() if _auth().public_read else None


def require(role: Role) -> Identity:
    """The person behind this request when their role is at least `role`; 401 or 403 otherwise."""
    who = identity()
    if who is None:
        reason = g.get("corral_token_error") or "log in first"
        raise HttpError(401, f"authentication required: {reason}")
    if not who.at_least(role):
        raise HttpError(403, f"{who.user} is {who.role}: this needs {role} or above")
    return who


def login(token: str) -> Identity:
    """Start a session for a token the registry just issued."""
    who = _auth().verifier.verify(token)
    session.clear()
    session.permanent = True
    session["token"] = token
    session[CSRF_FIELD] = secrets.token_urlsafe(24)
    g.corral_identity, g.corral_token, g.corral_via = who, token, "session"
    return who


def logout() -> None:
    session.clear()


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for forms and the page's fetch calls."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = session[CSRF_FIELD] = secrets.token_urlsafe(24)
    return token


def _check_csrf(view: Any) -> None:
    # A browser never adds a bearer token by itself, so such a request is no forgery.
    if g.get("corral_via") == "bearer" or getattr(view, "corral_csrf_exempt", False):
        return
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise HttpError(403, "the form's CSRF token is missing or stale: reload the page")


def _gate() -> None:
    """Runs before every view: deny by default."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None or request.endpoint == "static":
        return
    identity()
    if getattr(view, "corral_public", False):
        if request.method not in SAFE_METHODS:
            _check_csrf(view)
        return
    if request.method not in SAFE_METHODS:
        require(Role.ARTIST)
        _check_csrf(view)
    elif not _auth().public_read:
        require(Role.VIEWER)


def init_app(app: Flask, secret: str, public_read: bool, session_seconds: float,
             revocation_refresh_seconds: float) -> None:
    app.extensions["corral_auth"] = Auth(secret, public_read, session_seconds,
                                         revocation_refresh_seconds)
    app.before_request(_gate)

    @app.context_processor
    def _templates() -> dict[str, Any]:
        return {"me": identity(), "csrf_token": csrf_token, "Role": Role}
