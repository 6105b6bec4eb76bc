"""attempt.excused and job.submission_key.

Revision 0005, after 0004. attempt.excused: a failure since retried no longer counts towards
excluding its host from the job; every attempt stored before is not excused (the server
default), so the bad-host lists of jobs already running stay as they were. job.submission_key:
the submitter's key, unique, so a submission repeated after a timeout returns the first job;
NULL for every job stored before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempt") as batch:
        batch.add_column(sa.Column("excused", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("submission_key", sa.String(), nullable=True))
    op.create_index("ix_job_submission_key", "job", ["submission_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_job_submission_key", table_name="job")
    op.drop_column("job", "submission_key")
    op.drop_column("attempt", "excused")
