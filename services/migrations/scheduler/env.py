"""Alembic environment of the scheduler's database: the tables of SchedulerTable."""

from services.scheduler.store import SchedulerTable
from shared.migrations import run_environment

run_environment("scheduler", SchedulerTable.metadata)
