"""A service's `access` dependency for unit tests: a real Caller, for a token the test chooses."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Table

from services.common.access import Access, Caller
from shared.config import Settings, settings_from_mapping
from shared.identity import CONTEXT_KEY, Role, issue_token

SECRET = "unit-test-farm-secret-" + "x" * 20


def settings_with_secret(tmp_path: Path, **corral: Any) -> Settings:
    return settings_from_mapping({"CORRAL": {"data_dir": str(tmp_path / "data"),
                                             "secret": SECRET, **corral}})


def token_for(user: str, role: Role, token_id: str | None = None, **options: Any) -> str:
    return issue_token(SECRET, user, role, token_id or f"{user}-token", **options)


def caller(settings: Settings, service: str, token: str | None,
           audit_table: Table | None = None, origin: str = "unit test") -> Caller:
    """What a service method sees as `self.access` when called with `token`."""
    access = Access(audit_table)
    access.configure(settings, service)
    data = {} if token is None else {CONTEXT_KEY: token}
    data["corral_origin"] = origin
    context = SimpleNamespace(data=data, call_id_stack=[f"test.call.{service}"],
                              service_name=service)
    return Caller(access, context)
