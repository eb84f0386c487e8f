"""Billing (issue 18 items 6-8): ``billing_payment``, the index of payments recorded on invoices (an invoice's
balance in one SUM; a unique Idempotency-Key so a retried payment can never be recorded twice).

Revision ID: 0017_billing
Revises: 0016_tenancy
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from fhir_server.storage.models import UTCDateTime

revision = "0017_billing"
down_revision = "0016_tenancy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_payment",
        sa.Column("payment_id", sa.String(64), primary_key=True),
        sa.Column("invoice_id", sa.String(64), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("idempotency_key", sa.String(200), unique=True),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_billing_payment_invoice", "billing_payment", ["invoice_id"])


def downgrade() -> None:
    op.drop_index("ix_billing_payment_invoice", "billing_payment")
    op.drop_table("billing_payment")
