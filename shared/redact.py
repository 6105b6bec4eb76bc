"""What of a secret may be shown: a short fingerprint that tells two apart but gives neither."""

from __future__ import annotations

import hashlib
from typing import Any

SECRET_KEYS = frozenset({"lease_token", "token", "password", "secret"})


def fingerprint(secret: str | None) -> str:
    """`#` and 8 hex digits of the secret's SHA-256: the same secret always shows the same."""
    if not secret:
        return "-"
    return "#" + hashlib.sha256(str(secret).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def redacted(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of a message for a log: secrets as fingerprints, env values left out."""
    shown: dict[str, Any] = {}
    for key, value in message.items():
        if key in SECRET_KEYS:
            shown[key] = fingerprint(value)
        elif key == "env" and isinstance(value, dict):
            shown[key] = sorted(value)
        else:
            shown[key] = value
    return shown
