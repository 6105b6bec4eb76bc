"""The audit table (shared.audit) as the services' migrations create it, one definition for all.

A migration calls `create_audit_table("licence")` rather than spelling out the columns again; the
columns here are the table's first schema, so a later change to the audit table is a migration of
its own, not an edit of this function.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def create_audit_table(database: str) -> None:
    """Create `<database>_audit` with its indexes on time and actor."""
    table = f"{database}_audit"
    op.create_table(
        table,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("token_id", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("origin", sa.String(), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(f"ix_{table}_at", table, ["at"])
    op.create_index(f"ix_{table}_actor", table, ["actor"])
