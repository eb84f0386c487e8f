"""Editing a Subscription loses no notification (issue 21 item 1): ``subscription_state.verified``, set
once the current channel's handshake succeeded. While it is false (a changed channel awaiting its
handshake, or one whose handshake failed) the subscription keeps matching and its notifications wait in the
outbox as ``held`` rows, released when a handshake succeeds. Existing rows: verified when activated.

Revision ID: 0020_subscription_edits
Revises: 0019_patient_share
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0020_subscription_edits"
down_revision = "0019_patient_share"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("subscription_state", sa.Column("verified", sa.Boolean(), nullable=False,
                                                  server_default=sa.false()))
    op.execute("UPDATE subscription_state SET verified = activated")


def downgrade() -> None:
    op.drop_column("subscription_state", "verified")
