"""Alembic environment of the license service's database: the tables of LicenceTable."""

from services.license.store import LicenceTable
from shared.migrations import run_environment

run_environment("licence", LicenceTable.metadata)
