"""Alembic environment of the registry's database: the tables of RegistryTable."""

from services.registry.store import RegistryTable
from shared.migrations import run_environment

run_environment("registry", RegistryTable.metadata)
