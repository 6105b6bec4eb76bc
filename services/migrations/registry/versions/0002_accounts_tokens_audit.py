"""Accounts, the tokens issued to them, and the registry's audit log.

Revision 0002: the registry owns the farm's accounts (users, roles, argon2 password hashes), a
record of each token it issues (never the token itself) with its revocation, and the audit log of
what was done to accounts, tokens and workers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from shared.audit_migration import create_audit_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("username"),
    )
    op.create_table(
        "issuedtoken",
        sa.Column("token_id", sa.String(), nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("token_id"),
    )
    op.create_index("ix_issuedtoken_username", "issuedtoken", ["username"])
    op.create_index("ix_issuedtoken_revoked_at", "issuedtoken", ["revoked_at"])
    create_audit_table("registry")


def downgrade() -> None:
    op.drop_table("registry_audit")
    op.drop_table("issuedtoken")
    op.drop_table("account")
