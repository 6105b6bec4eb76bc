"""task.licences: the licences a task holds while it runs.

Revision 0002, after 0001. JSON {licence name: count} as text, like the other JSON columns; NULL
for a task that needs none (every task stored before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: SQLite adds it in place, no copy of the table.
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("licences", sa.String(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 or newer) keeps the table, its indexes and the
    # foreign keys pointing at it, where a batch copy would have to rebuild them.
    op.drop_column("task", "licences")
