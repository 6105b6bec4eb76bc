"""Hosts and reservations.

Revision 0001, the first: the resource negotiator's tables as create_all made them before Corral had
migrations. Defaults are the models' (set by Corral, not the database), so no column has a server
default.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host",
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("cores", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.String(), nullable=False),
        sa.Column("custom", sa.String(), nullable=False),
        sa.Column("reported_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host"),
    )

    op.create_table(
        "reservation",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("cores", sa.Float(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_indices", sa.String(), nullable=False),
        sa.Column("custom", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reservation_host", "reservation", ["host"])
    op.create_index("ix_reservation_worker_id", "reservation", ["worker_id"])
    op.create_index("ix_reservation_task_id", "reservation", ["task_id"])


def downgrade() -> None:
    op.drop_table("reservation")
    op.drop_table("host")
