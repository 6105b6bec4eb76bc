"""Finished jobs and collected results: the cleanup service's retention clocks.

Revision 0001, the first.
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
        "finished_job",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("keep", sa.Boolean(), nullable=False),
        sa.Column("retention", sa.String(), nullable=True),
        sa.Column("removed", sa.String(), nullable=False),
        sa.Column("record_purged", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_index("ix_finished_job_user", "finished_job", ["user"])
    op.create_index("ix_finished_job_finished_at", "finished_job", ["finished_at"])
    op.create_table(
        "collected_result",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("collected_at", sa.Float(), nullable=False),
        sa.Column("removed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("task_id", "attempt"),
    )
    op.create_index("ix_collected_result_job_id", "collected_result", ["job_id"])


def downgrade() -> None:
    op.drop_table("collected_result")
    op.drop_table("finished_job")
