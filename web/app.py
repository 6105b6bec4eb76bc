"""The monitor's Flask application factory: settings, secret checks, cookies, blueprints, errors."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from flask import Flask, Request, jsonify, redirect, render_template, request, url_for
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.config import Settings, load_settings
from shared.credentials import farm_secret
from shared.errors import ConfigError, CorralError
from web import auth
from web.errors import HttpError, describe
from web.rpc import RpcClient, ServiceUnavailable

log = logging.getLogger(__name__)

DEV_ENV_VAR = "CORRAL_WEB_DEV"
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "secret", "corral", "default", "dev",
                                 "please-change-me", "change-me-to-a-long-random-secret"})
"""Values a deployment template might ship with: refused like an empty secret."""


class _SessionInterface(SecureCookieSessionInterface):
    """Secure cookies when configured, or when the (trusted) proxy says the request was HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (
            bool(app.config.get("CORRAL_BEHIND_PROXY")) and _is_secure(request))


def _is_secure(req: Request) -> bool:
    try:
        return bool(req.is_secure)
    except RuntimeError:  # outside a request
        return False


def _secret(settings: Settings, dev: bool) -> str:
    """The farm secret; a random one only in dev mode (then no farm token verifies)."""
    try:
        secret = farm_secret(settings)
    except ConfigError:
        if dev:
            log.warning("dev mode: no farm secret, using a random one (nobody can log in)")
            return secrets.token_hex(32)
        raise
    if secret.strip().lower() in PLACEHOLDER_SECRETS and not dev:
        raise ConfigError("CORRAL.secret: is a placeholder value; set a long random secret")
    return secret


def create_app(settings: Settings | None = None, *, dev: bool | None = None,
               rpc: RpcClient | None = None) -> Flask:
    """The monitor. Refuses to start without a real farm secret unless `dev` (or CORRAL_WEB_DEV=1)."""
    settings = settings or load_settings()
    dev = dev if dev is not None else os.environ.get(DEV_ENV_VAR, "") in ("1", "true", "yes")
    secret = _secret(settings, dev)
    web = settings.web
    app = Flask(__name__)
    app.config.update(
        # The session cookie is signed with a key of its own, derived from the farm secret.
        SECRET_KEY=hmac.new(secret.encode(), b"corral-web-session", hashlib.sha256).hexdigest(),
        SESSION_COOKIE_NAME="corral_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=web.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=web.session_seconds),
        MAX_CONTENT_LENGTH=web.upload_limit_bytes,
        CORRAL_BEHIND_PROXY=web.behind_proxy,
        CORRAL_DEV=dev,
        JSON_SORT_KEYS=False,
    )
    app.session_interface = _SessionInterface()
    if web.behind_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    app.extensions["corral_settings"] = settings
    app.extensions["corral_rpc"] = rpc or RpcClient(settings.amqp_uri, web.rpc_timeout_seconds)
    auth.init_app(app, secret, web.public_read, web.session_seconds,
                  settings.revocation_refresh_seconds)

    from web.api import api
    from web.metrics import metrics
    from web.pages import pages

    app.register_blueprint(pages)
    app.register_blueprint(api)
    app.register_blueprint(metrics)
    _errors(app)
    return app


def _local_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.netloc and parsed.netloc != request.host:
        return "/"
    path = parsed.path or "/"
    return f"{path}?{parsed.query}" if parsed.query else path


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _errors(app: Flask) -> None:
    def answer(exc: BaseException) -> Any:
        status, body = describe(exc)
        if status >= 500 and status != 503:
            log.exception("request %s %s failed", request.method, request.path, exc_info=exc)
        if _wants_json():
            return jsonify(body), status
        if status == 401:
            # A page action by someone not logged in: log in, then back to where they were.
            back = request.form.get("next") or request.referrer or request.path
            return redirect(url_for("pages.login", next=_local_path(back)))
        return render_template("error.html", status=status, error=body["error"]), status

    for kind in (HttpError, CorralError, ServiceUnavailable, FileNotFoundError,
                 FileExistsError):
        app.register_error_handler(kind, answer)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> Any:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return answer(HttpError(413, f"the request is larger than the limit of {limit} bytes"))

    @app.errorhandler(HTTPException)
    def http(exc: HTTPException) -> Any:
        return answer(HttpError(exc.code or 500, exc.description or exc.name))

    @app.errorhandler(Exception)
    def anything(exc: Exception) -> Any:
        return answer(exc)
