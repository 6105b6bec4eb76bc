"""Alembic environment of the resource negotiator's database: the tables of NegotiatorTable."""

from services._negotiator_store import NegotiatorTable
from shared.migrations import run_environment

run_environment("negotiator", NegotiatorTable.metadata)
