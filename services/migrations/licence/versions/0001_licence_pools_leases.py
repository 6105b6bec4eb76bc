"""Licence pools and leases.

Revision 0001, the first: the license service's tables as create_all made them before Corral had
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
        "licence_pool",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("external_in_use", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("synced_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )

    op.create_table(
        "licence_lease",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=False),
        sa.Column("holdings", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_licence_lease_task_id", "licence_lease", ["task_id"])
    op.create_index("ix_licence_lease_worker_id", "licence_lease", ["worker_id"])


def downgrade() -> None:
    op.drop_table("licence_lease")
    op.drop_table("licence_pool")
