"""Billing (issue 18 items 6-8): charges, invoices, payments and claims as FHIR resources and rules.

- ``POST Encounter/[id]/$charge`` makes the ChargeItems of what an encounter rendered (charge.py);
- Invoice writes are priced and checked by the server (invoice.py, pricing.py, money.py);
- PaymentReconciliations pay invoices, with ``Idempotency-Key`` (payment.py, tables.py, ledger.py);
- issuing an insured patient's invoice makes the Claim, and a ClaimResponse moves its Claim (claim.py).

docs/workflows/billing.md shows the calls an app makes and lists the rule codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint
from fhir_server.rest.operations import Operation
from fhir_server.workflows.billing import tables  # noqa: F401 (its table on the storage metadata)
from fhir_server.workflows.billing.charge import DEFINITION, Charge
from fhir_server.workflows.billing.claim import follow_claim_response
from fhir_server.workflows.billing.invoice import InvoiceRules
from fhir_server.workflows.billing.money import BillingRules
from fhir_server.workflows.billing.payment import PaymentRules
from fhir_server.workflows.billing.shape import shape_checked

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


def install(server: FhirServer) -> None:
    rules = BillingRules.load()
    invoices, payments = InvoiceRules(rules), PaymentRules(rules)
    server.hooks.register(HookPoint.BEFORE_VALIDATE, shape_checked(invoices.before_validate))
    server.hooks.register(HookPoint.BEFORE_COMMIT, invoices.before_commit)
    server.hooks.register(HookPoint.BEFORE_VALIDATE, shape_checked(payments.before_validate))
    server.hooks.register(HookPoint.BEFORE_COMMIT, payments.before_commit)
    server.hooks.register(HookPoint.BEFORE_COMMIT, follow_claim_response)
    server.operations.register(Operation("charge", Charge(rules), DEFINITION, types=frozenset({"Encounter"}),
                                         instance=True, affects_state=True))
