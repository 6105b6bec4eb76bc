"""The audit log of the licence database.

Revision 0002: the table licence_audit (shared.audit), where the service records every mutation of
what it owns: who (user, role, token id), what (the RPC method and its arguments, secrets left
out), which object, when (the database's clock) and from where.
"""

from __future__ import annotations

from alembic import op

from shared.audit_migration import create_audit_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_table("licence")


def downgrade() -> None:
    op.drop_table("licence_audit")
