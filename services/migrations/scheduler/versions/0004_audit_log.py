"""The audit log of the scheduler database.

Revision 0004: the table scheduler_audit (shared.audit), where the service records every mutation of
what it owns: who (user, role, token id), what (the RPC method and its arguments, secrets left
out), which object, when (the database's clock) and from where.
"""

from __future__ import annotations

from alembic import op

from shared.audit_migration import create_audit_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_table("scheduler")


def downgrade() -> None:
    op.drop_table("scheduler_audit")
