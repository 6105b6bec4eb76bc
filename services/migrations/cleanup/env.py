"""Alembic environment of the cleanup service's database: the tables of CleanupTable."""

from services.cleanup.store import CleanupTable
from shared.migrations import run_environment

run_environment("cleanup", CleanupTable.metadata)
