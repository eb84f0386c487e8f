"""What has been paid on an invoice: one SUM over the payment index (tables.py), in the caller's transaction."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from fhir_server.storage.repository import Repository
from fhir_server.workflows.billing.money import cents
from fhir_server.workflows.billing.tables import PAYMENT


def paid(repo: Repository, invoice_id: str) -> Decimal:
    total = repo.execute(select(func.coalesce(func.sum(PAYMENT.c.amount), 0))
                         .where(PAYMENT.c.invoice_id == invoice_id)).scalar_one()
    return cents(Decimal(str(total)))


def is_recorded(repo: Repository, payment_id: str) -> bool:
    return repo.execute(select(PAYMENT.c.payment_id).where(PAYMENT.c.payment_id == payment_id)).first() is not None
