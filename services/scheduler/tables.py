"""The base of the scheduler's tables: one metadata, created in the scheduler's own database."""

from __future__ import annotations

from sqlalchemy.orm import registry
from sqlmodel import SQLModel


class SchedulerTable(SQLModel, registry=registry()):
    """Base of the scheduler's tables: their own metadata, created in the scheduler's database."""
