"""Jobs, tasks, task dependencies and attempts.

Revision 0001, the first: the scheduler's tables as create_all made them before Corral had
migrations, and before tasks had licences (0002). Defaults are the models' (set by Corral, not
the database), so no column has a server default.
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
        "job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("band", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("task_count", sa.Integer(), nullable=False),
        sa.Column("depends_on", sa.String(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("max_host_failures", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_state", "job", ["state"])
    op.create_index("ix_job_user", "job", ["user"])

    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("layer", sa.String(), nullable=True),
        sa.Column("frame_start", sa.Integer(), nullable=True),
        sa.Column("frame_end", sa.Integer(), nullable=True),
        sa.Column("frame_count", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("pool", sa.String(), nullable=False),
        sa.Column("band", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("base_priority", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("command", sa.String(), nullable=False),
        sa.Column("shell", sa.Boolean(), nullable=False),
        sa.Column("env", sa.String(), nullable=False),
        sa.Column("cwd", sa.String(), nullable=True),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column("stall_timeout", sa.Float(), nullable=True),
        sa.Column("resources", sa.String(), nullable=True),
        sa.Column("preferred", sa.String(), nullable=True),
        sa.Column("memory_factor", sa.Float(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_delay", sa.Float(), nullable=False),
        sa.Column("retry_exit_codes", sa.String(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("head", sa.Boolean(), nullable=False),
        sa.Column("ready_at", sa.Float(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=True),
        sa.Column("host", sa.String(), nullable=True),
        sa.Column("lease_token", sa.String(), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("dispatched_at", sa.Float(), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("result", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("log_tail", sa.String(), nullable=True),
        sa.Column("log_path", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    # The release pass reads tasks in ix_task_release's order (head and priority descending).
    op.create_index("ix_task_release", "task",
                    ["state", "pool", "band", sa.text("head DESC"), sa.text("priority DESC"), "id"])
    op.create_index("ix_task_fairness", "task",
                    ["state", "pool", "band", "head", "priority", "user", "id"])
    op.create_index("ix_task_lease", "task", ["state", "lease_expires_at"])
    op.create_index("ix_task_job_state", "task", ["job_id", "state"])
    op.create_index("ix_task_job_layer_state", "task", ["job_id", "layer", "state"])
    op.create_index("ix_task_user_state", "task", ["user", "state"])
    op.create_index("ix_task_job_id", "task", ["job_id"])
    op.create_index("ix_task_worker_id", "task", ["worker_id"])

    op.create_table(
        "task_dependency",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("depends_on_task_id", sa.Integer(), nullable=True),
        sa.Column("depends_on_job_id", sa.Integer(), nullable=True),
        sa.Column("depends_on_layer", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_dependency_task_id", "task_dependency", ["task_id"])
    op.create_index("ix_task_dependency_depends_on_task_id", "task_dependency",
                    ["depends_on_task_id"])
    op.create_index("ix_task_dependency_depends_on_job_id", "task_dependency", ["depends_on_job_id"])

    op.create_table(
        "attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=True),
        sa.Column("lease_token", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("log_path", sa.String(), nullable=True),
        sa.Column("process_started_at", sa.Float(), nullable=True),
        sa.Column("process_ended_at", sa.Float(), nullable=True),
        sa.Column("peak_memory_mb", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_attempt_task_id", "attempt", ["task_id"])
    op.create_index("ix_attempt_lease_token", "attempt", ["lease_token"])


def downgrade() -> None:
    op.drop_table("attempt")
    op.drop_table("task_dependency")
    op.drop_table("task")
    op.drop_table("job")
