"""The audit log each service keeps of the mutations of what it owns: who, what, which, when, where.

The record is kept by the service that owns the thing, in its own database (a table
`<database>_audit` in each service's metadata, made by its own migration: the names differ so
services may even share one database): the scheduler records what was done to
jobs and tasks, the registry to accounts and tokens, the license service to licence pools, the
negotiator to hosts. The registry's `list_audit` gathers every service's entries into one log,
newest first, for `corral audit` and the monitor's admin page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, insert, select

from shared.db import Store

MAX_DETAIL_CHARS = 2000
"""An argument whose JSON is longer than this (a whole job spec) is kept as its length only."""

SECRET_ARGUMENTS = frozenset({"password", "token", "secret", "lease_token"})
"""Arguments never written to the audit log."""


class AuditEntry(BaseModel):
    """One mutation as the owning service recorded it (the wire schema of list_audit)."""

    model_config = ConfigDict(frozen=True)

    id: int
    at: float
    service: str
    actor: str
    role: str
    token_id: str
    action: str
    target: str
    origin: str
    detail: dict[str, Any]


def audit_table(metadata: MetaData, database: str) -> Table:
    """The audit table `<database>_audit` in a service's own metadata (its migrations make it)."""
    return Table(
        f"{database}_audit", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", Float, nullable=False, index=True),
        Column("service", String, nullable=False),
        Column("actor", String, nullable=False, index=True),
        Column("role", String, nullable=False),
        Column("token_id", String, nullable=False),
        Column("action", String, nullable=False),
        Column("target", String, nullable=False),
        Column("origin", String, nullable=False),
        Column("detail", String, nullable=False),
    )


def audit_detail(arguments: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments as the audit keeps them: no secrets, nothing huge."""
    detail: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in SECRET_ARGUMENTS:
            continue
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = json.dumps(repr(value))
        detail[name] = value if len(text) <= MAX_DETAIL_CHARS else f"<{len(text)} characters>"
    return detail


def record(store: Store, table: Table, *, service: str, actor: str, role: str, token_id: str,
           action: str, target: str, origin: str, detail: dict[str, Any]) -> None:
    """Write one entry, at the database's time."""
    with store.write() as session:
        session.execute(insert(table).values(
            at=store.now(session), service=service, actor=actor, role=role, token_id=token_id,
            action=action, target=target, origin=origin, detail=json.dumps(detail, default=repr)))


def entries(store: Store, table: Table, since: float | None = None, actor: str | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` entries at or after `since`, of `actor` if given, newest first."""
    query = select(table)
    if since is not None:
        query = query.where(table.c.at >= float(since))
    if actor:
        query = query.where(table.c.actor == actor)
    query = query.order_by(table.c.at.desc(), table.c.id.desc()).limit(max(1, min(int(limit), 10000)))
    with store.read() as session:
        rows = session.execute(query).mappings().all()
    return [AuditEntry(**{**row, "detail": json.loads(row["detail"])}).model_dump(mode="json")
            for row in rows]


def merge(lists: Iterable[list[dict[str, Any]]], limit: int = 100) -> list[dict[str, Any]]:
    """Several services' entries as one log, newest first."""
    merged = [entry for entries_of_one in lists for entry in entries_of_one]
    merged.sort(key=lambda entry: (entry["at"], entry["service"], entry["id"]), reverse=True)
    return merged[:max(1, int(limit))]
