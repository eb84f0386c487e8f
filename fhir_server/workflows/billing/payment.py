"""Payments (issue 18 item 7): a PaymentReconciliation whose ``detail.request`` is an Invoice pays it.

- ``paymentAmount`` > 0 pays, < 0 refunds (a refund needs its reason in ``disposition``); 2 decimal places at
  most, in the hospital's currency; a ``detail.amount``, when given, equals it.
- A payment never exceeds the invoice's balance (``totalGross`` - what was paid), a refund never exceeds what
  was paid: both checked under a lock of the invoice's row (SELECT ... FOR UPDATE), so concurrent payments
  on one invoice are checked one after the other.
- Paid in full: the invoice becomes ``balanced``; a refund on a balanced invoice makes it ``issued`` again.
- A recorded payment is never changed or deleted (a refund corrects it).
- ``Idempotency-Key``: the create is conditional on the key (fhir_server/rest/idempotency.py), and the key is
  written into the unique index of ``billing_payment`` in the same transaction, so a retried payment is
  recorded once and every retry answers with the first one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import insert

from fhir_server.hooks import WriteEvent
from fhir_server.rest.idempotency import IDEMPOTENCY_KEY_SYSTEM
from fhir_server.storage.repository import Repository
from fhir_server.workflows.billing import ledger
from fhir_server.workflows.billing.money import BillingRules, cents, decimal_of
from fhir_server.workflows.billing.tables import PAYMENT
from fhir_server.workflows.rules import rule_violation

PR = "PaymentReconciliation"


def invoice_of(payment: dict[str, Any]) -> tuple[int, str] | None:
    """(detail index, invoice id) of the invoice paid; None when the payment pays no invoice (an insurer's
    remittance from the claims adapter, say); 422 when it names several."""
    found = [(i, d["request"]["reference"].split("/", 1)[1]) for i, d in enumerate(payment.get("detail") or [])
             if str((d.get("request") or {}).get("reference", "")).startswith("Invoice/")]
    if len(found) > 1:
        raise rule_violation(422, "billing-payment-invoice", "A payment pays one invoice (one detail.request)",
                             (f"{PR}.detail[{found[1][0]}].request",))
    return found[0] if found else None


class PaymentRules:
    def __init__(self, rules: BillingRules) -> None:
        self.rules = rules

    def before_validate(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != PR or repo is None:
            return
        if event.previous is not None and ledger.is_recorded(repo, event.previous.id):
            raise rule_violation(409, "billing-payment-immutable", "A recorded payment is never changed or deleted: "
                                                                   "record a refund instead", (PR,))
        if event.interaction != "create" or event.resource is None:
            return
        payment = event.resource
        target = invoice_of(payment)
        if target is None:
            return
        index, _invoice = target
        amount = payment.get("paymentAmount") or {}
        value = decimal_of(amount.get("value"), f"{PR}.paymentAmount.value")
        if value == 0 or cents(value) != value:
            raise rule_violation(422, "billing-payment-amount", "A payment's amount is non-zero with at most 2 "
                                                                "decimal places", (f"{PR}.paymentAmount",))
        if amount.get("currency", self.rules.currency) != self.rules.currency:
            raise rule_violation(422, "billing-currency", f"Payments are in {self.rules.currency}",
                                 (f"{PR}.paymentAmount.currency",))
        detail = payment["detail"][index]
        if "amount" in detail and decimal_of((detail["amount"] or {}).get("value"),
                                             f"{PR}.detail[{index}].amount.value") != value:
            raise rule_violation(422, "billing-payment-amount", "detail.amount must equal paymentAmount",
                                 (f"{PR}.detail[{index}].amount",))
        if value < 0 and not str(payment.get("disposition") or "").strip():
            raise rule_violation(422, "billing-refund-reason", "A refund (a negative payment) states its reason in "
                                                               "disposition", (f"{PR}.disposition",))
        today = date.today().isoformat()
        payment.setdefault("status", "active")
        payment.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
        payment.setdefault("paymentDate", today)
        payment.setdefault("outcome", "complete")
        amount.setdefault("currency", self.rules.currency)
        detail.setdefault("amount", dict(amount))
        detail.setdefault("type", {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payment-type",
                                               "code": "payment" if value > 0 else "adjustment"}]})

    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != PR or repo is None:
            return
        if event.interaction == "delete" and event.previous is not None and ledger.is_recorded(repo, event.previous.id):
            raise rule_violation(409, "billing-payment-immutable", "A recorded payment is never deleted: record a "
                                                                   "refund instead", (PR,))
        if event.interaction != "create" or event.resource is None:
            return
        target = invoice_of(event.resource)
        if target is None:
            return
        payment = event.resource
        _index, invoice_id = target
        repo.read("Invoice", invoice_id)  # auth: the caller may see the invoice it pays (403/404/410 otherwise)
        current = repo.current("Invoice", invoice_id, for_update=True)  # payments on one invoice, one at a time
        assert current is not None and current.content is not None
        invoice = current.content
        value = decimal_of(payment["paymentAmount"]["value"], f"{PR}.paymentAmount.value")
        status = invoice.get("status")
        if status not in (("issued",) if value > 0 else ("issued", "balanced")):
            raise rule_violation(409, "billing-payment-invoice-status", f"Invoice/{invoice_id} is {status}: "
                                 "payments go to issued invoices (refunds also to balanced ones)",
                                 (f"{PR}.detail.request",))
        gross = decimal_of((invoice.get("totalGross") or {}).get("value", 0), "Invoice.totalGross.value")
        paid = ledger.paid(repo, invoice_id)
        if value > gross - paid:
            raise rule_violation(409, "billing-payment-exceeds-balance", f"The payment of {value} exceeds the "
                                 f"invoice's balance of {gross - paid}", (f"{PR}.paymentAmount",))
        if -value > paid:
            raise rule_violation(409, "billing-refund-exceeds-paid", f"The refund of {-value} exceeds the {paid} "
                                 "paid on the invoice", (f"{PR}.paymentAmount",))
        key = next((i.get("value") for i in payment.get("identifier") or []
                    if i.get("system") == IDEMPOTENCY_KEY_SYSTEM), None)
        # The unique key commits with the payment or not at all; a racing duplicate fails here, and the unit of
        # work runs the request again, finding the first payment (rest/idempotency.py).
        repo.execute(insert(PAYMENT).values(payment_id=event.resource_id, invoice_id=invoice_id, amount=value,
                                            idempotency_key=key, recorded_at=datetime.now(UTC)))
        now_paid = paid + value
        new_status = "balanced" if now_paid == gross else "issued"
        if new_status != status:
            repo.update("Invoice", invoice_id, {**invoice, "status": new_status})


