"""task.licence_refusals: how many ends in a row said "no licence".

Revision 0008, after 0007. A task that exits with one of the farm's "no licence" exit codes, or
prints one of its patterns, goes back to its queue uncharged after a delay that grows with this
count (services.scheduler.refusals); existing tasks have had none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not a batch: SQLite adds a NOT NULL column with a default in place, where a batch copy of
    # the table would rebuild its indexes and lose ix_task_release's DESC columns.
    op.add_column("task", sa.Column("licence_refusals", sa.Integer(), nullable=False,
                                    server_default=sa.text("0")))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 or newer) keeps the table and its indexes.
    op.drop_column("task", "licence_refusals")
