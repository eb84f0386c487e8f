"""Subscriptions (fhir_server/subscriptions/tables.py): event counters, events, cache generation, ws tokens.

Revision ID: 0010
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from fhir_server.storage.models import UTCDateTime

revision = "0010"
down_revision = "0005"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "subscription_state",
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("author", Json),
        sa.Column("activated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", name="pk_subscription_state"),
    )
    op.create_table(
        "subscription_event",
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", UTCDateTime(), nullable=False),
        sa.Column("focus", sa.String(200), nullable=False),
        sa.Column("interaction", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", "event_number", name="pk_subscription_event"),
    )
    op.create_table(
        "subscription_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subscription_generation"),
    )
    op.create_table(
        "subscription_ws_token",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_subscription_ws_token"),
    )


def downgrade() -> None:
    op.drop_table("subscription_ws_token")
    op.drop_table("subscription_generation")
    op.drop_table("subscription_event")
    op.drop_table("subscription_state")
