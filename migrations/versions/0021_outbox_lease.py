"""Outbox leases (issue 21 items 3-4): ``outbox.lease_owner``, the dispatcher that holds a row while it is
``delivering``. Its heartbeat renews only its own rows, and it finishes a row only while it still holds it.

Revision ID: 0021_outbox_lease
Revises: 0020_subscription_edits
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0021_outbox_lease"
down_revision = "0020_subscription_edits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("lease_owner", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_owner")
