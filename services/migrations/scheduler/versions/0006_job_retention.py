"""job.keep and job.retention: what the cleanup service keeps of a job once it ended.

Revision 0006, after 0005. Both come from the job's spec (`keep: true`, `retention: {...}`) and
travel in its job_finished event; existing jobs keep nothing special (the farm's retention).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("keep", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("retention", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("retention")
        batch.drop_column("keep")
