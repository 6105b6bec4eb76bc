"""attempt(state, task_id) index: the bad-host check starts from the few failed attempts.

Revision 0003, after 0002. Without it every release pass read every attempt of the jobs it
looked at, so a pass grew with a job's history (a 3,000-task burst spent a seventh of the
scheduler's time there).
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # It may exist already in a database made by create_all from these models before it was
    # versioned (such a database is recognised by its columns, which this revision leaves alike).
    op.create_index("ix_attempt_state_task", "attempt", ["state", "task_id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_attempt_state_task", table_name="attempt", if_exists=True)
