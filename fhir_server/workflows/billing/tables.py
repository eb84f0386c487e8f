"""The billing area's one table (migration 0017_billing): an index of the payments recorded on invoices.

``billing_payment`` holds one row per PaymentReconciliation that pays (or refunds) an Invoice, written in the
payment's own transaction. The truth stays in the PaymentReconciliation resources; the table is an index so
that an invoice's balance is one SUM in the database, and its unique ``idempotency_key`` makes a second copy of
a retried payment impossible to commit, whatever path wrote it.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Numeric, String, Table

from fhir_server.storage.models import Base, UTCDateTime

PAYMENT = Table(
    "billing_payment", Base.metadata,
    Column("payment_id", String(64), primary_key=True),  # PaymentReconciliation.id
    Column("invoice_id", String(64), nullable=False),
    Column("amount", Numeric(14, 2), nullable=False),  # negative: a refund
    Column("idempotency_key", String(200), unique=True),  # null: the payment came without one
    Column("recorded_at", UTCDateTime(), nullable=False),
    Index("ix_billing_payment_invoice", "invoice_id"),
)
