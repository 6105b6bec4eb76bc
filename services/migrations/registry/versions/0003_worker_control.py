"""Worker control: a worker's name, a stop asked of it, and the drains and disables kept.

Revision 0003: a worker's identity across restarts is its host and name (`worker.name`; none
recorded means its pool's name), and `workercontrol` keeps a drain or disable against that
identity until it is enabled, so a worker started again under it obeys at once. A stop is asked
of one running worker (`worker.stop`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker") as batch:
        batch.add_column(sa.Column("name", sa.String(), nullable=True))
        batch.add_column(sa.Column("stop", sa.String(), nullable=True))
    op.create_table(
        "workercontrol",
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("wanted", sa.String(), nullable=False),
        sa.Column("set_by", sa.String(), nullable=False),
        sa.Column("set_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "name"),
    )


def downgrade() -> None:
    op.drop_table("workercontrol")
    with op.batch_alter_table("worker") as batch:
        batch.drop_column("stop")
        batch.drop_column("name")
