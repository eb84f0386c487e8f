"""The insurer's side (issue 18 item 8): the Claim made when an insured patient's invoice is issued, and the
Claim following its ClaimResponse.

On issue (invoice.py), a patient with an active Coverage (``Coverage?beneficiary=Patient/x&status=active``, its
period covering today) gets a Claim (``use`` claim, ``status`` active) that the claims adapter can send as it
is (``POST Claim/[id]/$submit``, docs/adapters.md): items from the invoice lines (``productOrService`` = the
ChargeItem's code, ``quantity``, ``unitPrice``, ``net`` = the line's gross, ``encounter``), ``insurance`` the
Coverage (focal), ``insurer`` its first payor, ``provider`` the invoice's issuer, ``total`` = ``totalGross``,
and the identifier ``urn:fhir-server:invoice|Invoice/<id>`` (the one the adapter's own ``$claim`` uses).

A ClaimResponse written with ``request`` = Claim/x sets that Claim's ``status`` to the response's status
(both FinancialResourceStatusCodes: active | cancelled | draft) and records the response's ``outcome``
(queued | complete | error | partial) and the response itself on the Claim (extension ``claim-outcome``).
A response ``entered-in-error`` changes nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.repository import Repository
from fhir_server.workflows.billing.money import BillingRules, decimal_of, money
from fhir_server.workflows.rules import rule_violation

INVOICE_SYSTEM = "urn:fhir-server:invoice"
CLAIM_OUTCOME = "https://fhir-server.dev/StructureDefinition/claim-outcome"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"


def active_coverage(repo: Repository, patient_ref: str) -> dict[str, Any] | None:
    today = date.today().isoformat()
    for cid in repo.find_ids("Coverage", [("beneficiary", patient_ref), ("status", "active")], limit=20):
        coverage = repo.read("Coverage", cid).content or {}
        period = coverage.get("period") or {}
        if period.get("start", today)[:10] <= today <= period.get("end", today)[:10]:
            return coverage
    return None


def claim_on_issue(repo: Repository, invoice: dict[str, Any], rules: BillingRules) -> dict[str, Any] | None:
    patient = (invoice.get("subject") or {}).get("reference", "")
    coverage = active_coverage(repo, patient)
    if coverage is None:
        return None  # self-pay
    if not (invoice.get("issuer") or {}).get("reference"):
        raise rule_violation(422, "billing-claim-provider", "The patient is insured: the invoice needs its issuer "
                                                            "(the hospital Organization), the Claim's provider",
                             ("Invoice.issuer",))
    items: list[dict[str, Any]] = []
    encounters: set[str] = set()
    for n, line in enumerate(invoice.get("lineItem") or [], start=1):
        ref = (line.get("chargeItemReference") or {}).get("reference", "")
        charge = repo.read("ChargeItem", ref.split("/", 1)[1]).content or {}
        components = line.get("priceComponent") or []
        base = next(c for c in components if c.get("type") == "base")
        quantity = decimal_of(base.get("factor", 1), "Invoice.lineItem.priceComponent.factor")
        base_value = decimal_of(base["amount"]["value"], "Invoice.lineItem.priceComponent.amount")
        gross = sum((decimal_of(c["amount"]["value"], "Invoice.lineItem.priceComponent.amount")
                     for c in components if "amount" in c), Decimal(0))
        item: dict[str, Any] = {"sequence": n, "productOrService": charge.get("code"),
                                "quantity": {"value": float(quantity)},
                                "unitPrice": money(base_value / quantity if quantity else base_value, rules.currency),
                                "net": money(gross, rules.currency)}
        context = (charge.get("context") or {}).get("reference", "")
        if context.startswith("Encounter/"):
            item["encounter"] = [{"reference": context}]
            encounters.add(context.split("/", 1)[1])
        items.append(item)
    inpatient = any((repo.read("Encounter", e).content or {}).get("class", {}).get("code") == "IMP"
                    for e in sorted(encounters))
    claim: dict[str, Any] = {
        "resourceType": "Claim", "status": "active", "use": "claim",
        "identifier": [{"system": INVOICE_SYSTEM, "value": f"Invoice/{invoice['id']}"}],
        "type": {"coding": [{"system": CLAIM_TYPE, "code": "institutional" if inpatient else "professional"}]},
        "patient": {"reference": patient}, "created": datetime.now(UTC).date().isoformat(),
        "provider": invoice["issuer"],
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                 "code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/{coverage['id']}"}}],
        "item": items, "total": invoice.get("totalGross"),
    }
    payor = next((p for p in coverage.get("payor") or []
                  if (p.get("reference") or "").startswith("Organization/")), None)
    if payor is not None:
        claim["insurer"] = payor
    return repo.create("Claim", claim).content


def follow_claim_response(event: WriteEvent, repo: Repository | None) -> None:
    """BEFORE_COMMIT of a ClaimResponse: its Claim takes the response's status and outcome, at the end of the unit
    of work (a finisher), so a writer that updates the Claim after storing the response in the same transaction
    (the claims adapter's callbacks record their exchange on the Claim) cannot put the old status back."""
    if event.resource_type != "ClaimResponse" or repo is None or event.resource is None:
        return
    ref = (event.resource.get("request") or {}).get("reference", "")
    if not ref.startswith("Claim/") or event.resource.get("status") == "entered-in-error":
        return
    claim_id, response_id = ref.split("/", 1)[1], str(event.resource_id)
    repo.finishers[f"billing: Claim/{claim_id} follows its response"] = \
        lambda r: _follow(r, claim_id, response_id)


def _follow(repo: Repository, claim_id: str, response_id: str) -> None:
    response = (repo.current("ClaimResponse", response_id) or None)
    current = repo.current("Claim", claim_id, for_update=True)
    if response is None or response.content is None or current is None or current.deleted or current.content is None:
        return  # referential integrity (when on) refuses a dangling request; otherwise nothing to follow
    claim = dict(current.content)
    outcome = {"url": CLAIM_OUTCOME, "extension": [
        {"url": "outcome", "valueCode": response.content.get("outcome")},
        {"url": "response", "valueReference": {"reference": f"ClaimResponse/{response_id}"}}]}
    extensions = [e for e in claim.get("extension") or [] if e.get("url") != CLAIM_OUTCOME]
    updated = {**claim, "status": response.content.get("status"), "extension": [*extensions, outcome]}
    if updated != claim:
        repo.update("Claim", claim_id, updated)
