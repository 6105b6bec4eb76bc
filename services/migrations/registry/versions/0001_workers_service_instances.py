"""Workers and service instances.

Revision 0001, the first: the registry's tables as create_all made them before Corral had
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
        "worker",
        sa.Column("worker_id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("bands", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("current_task", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("left_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_index("ix_worker_host", "worker", ["host"])
    op.create_index("ix_worker_pool", "worker", ["pool"])
    op.create_index("ix_worker_state", "worker", ["state"])

    op.create_table(
        "serviceinstance",
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("service", "host"),
    )


def downgrade() -> None:
    op.drop_table("serviceinstance")
    op.drop_table("worker")
