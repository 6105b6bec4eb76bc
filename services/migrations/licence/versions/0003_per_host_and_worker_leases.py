"""Per-host licence pools and leases held by a worker for its whole life.

Revision 0003, after 0002. licence_pool.per_host: the pool counts one seat per host (a node-locked
licence covers every task on that machine). licence_lease.host: where the lease is used, which a
per-host pool counts by. licence_lease.lifetime: the lease is held by a worker from its start to
its exit (`corral worker run --hold-licence`), not by one task attempt. Existing pools count per lease
and existing leases belong to task attempts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("licence_pool") as batch:
        batch.add_column(sa.Column("per_host", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("licence_lease") as batch:
        batch.add_column(sa.Column("host", sa.String(), nullable=True))
        batch.add_column(sa.Column("lifetime", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("licence_lease") as batch:
        batch.drop_column("lifetime")
        batch.drop_column("host")
    with op.batch_alter_table("licence_pool") as batch:
        batch.drop_column("per_host")
