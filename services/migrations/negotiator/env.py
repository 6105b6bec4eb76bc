"""Alembic environment of the resource negotiator's database: the tables of NegotiatorTable."""

from services.resource_negotiator.store import NegotiatorTable
from shared.migrations import run_environment

run_environment("negotiator", NegotiatorTable.metadata)
