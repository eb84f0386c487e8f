"""HL7 v2 message store (interfaces/mllp/store.py): every message received over MLLP, before its ACK.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import BigId, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7_message",
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("control_id", sa.String(199), nullable=True),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ack", sa.Text(), nullable=True),
        sa.Column("resources", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_hl7_message"),
        sa.UniqueConstraint("sender", "control_id", name="uq_hl7_message_sender_control_id"),
    )
    op.create_index("ix_hl7_message_status_received", "hl7_message", ["status", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_hl7_message_status_received", table_name="hl7_message")
    op.drop_table("hl7_message")
