"""``POST Encounter/[id]/$charge``: the ChargeItems for what the encounter rendered (issue 18 item 6).

An explicit operation rather than hooks on every clinical write: charging is a billing officer's step (run it
at discharge or at the end of a visit, again at any time: it is idempotent), it runs with the caller's access,
and clinical writes never fail because a price is missing. Services, each one ChargeItem (``status``
billable, ``identifier`` ``urn:fhir-server:charge-source|<what it charges>``, ``definitionCanonical`` the
ChargeItemDefinition that prices it, ``context`` the encounter, ``subject`` the patient):

- the consultation: the encounter itself when ``class`` AMB and ``status`` finished (priced by its
  ``serviceType`` / ``type`` codes, else ``billing-service#consultation``);
- lab tests: ``DiagnosticReport?encounter=...&status=final`` (priced by the report's ``code``);
- dispensed medicines: ``MedicationDispense?context=...&status=completed`` (the medication's code; quantity =
  the dispensed quantity);
- bed days: each ``location`` of a class IMP encounter with an ended ``period`` (its nights, at least one;
  priced by the Location's ``type``, else ``billing-service#bed-day``).

A service with no price in the price list is refused (422 ``billing-no-price``, naming it) and nothing is
charged. Answers 200 with a ``collection`` Bundle of the encounter's ChargeItems (new and earlier ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_server.errors import FORBIDDEN, INVALID, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository
from fhir_server.workflows.billing.money import BillingRules
from fhir_server.workflows.billing.pricing import find_price, price_list
from fhir_server.workflows.rules import rule_violation

CHARGE_SOURCE = "urn:fhir-server:charge-source"
DEFINITION = "urn:fhir-server:OperationDefinition:encounter-charge"


@dataclass
class Service:
    source: str  # what is charged: Encounter/1, DiagnosticReport/5, Encounter/1/location/0
    codings: list[dict[str, Any]]
    quantity: float
    when: str | None
    service: str | None = None  # ChargeItem.service (DiagnosticReport / MedicationDispense)


def _codings(*concepts: Any) -> list[dict[str, Any]]:
    return [c for concept in concepts for c in (concept or {}).get("coding") or []]


def _nights(period: dict[str, Any]) -> int:
    try:
        start, end = date.fromisoformat(period["start"][:10]), date.fromisoformat(period["end"][:10])
    except ValueError:  # a partial date (2026-12): no count of nights to make, one is charged
        return 1
    return max(1, (end - start).days)


class Charge:
    def __init__(self, rules: BillingRules) -> None:
        self.rules = rules

    def __call__(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if rid is None:
            raise FhirError(400, INVALID, "$charge runs on one encounter: POST Encounter/[id]/$charge")
        out = self.charge(repo, rid)
        bundle = {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"fullUrl": f"{req.base_url}/ChargeItem/{c['id']}", "resource": c} for c in out]}
        return FhirResponse(200, bundle)

    def charge(self, repo: Repository, rid: str) -> list[dict[str, Any]]:
        """The encounter's ChargeItems, charging what is not yet charged (other areas call this too: a
        discharge's final invoice), with ``repo``'s access."""
        if not repo.access.may("ChargeItem", "c"):  # auth: only who may create ChargeItems charges
            raise FhirError(403, FORBIDDEN, "$charge creates ChargeItems, which this token may not", ("$charge",))
        encounter = repo.read("Encounter", rid).content or {}
        patient = (encounter.get("subject") or {}).get("reference", "")
        if not patient.startswith("Patient/"):
            raise rule_violation(422, "billing-charge-subject", "The encounter has no patient to charge",
                                 ("Encounter.subject",))
        repo.lock(f"billing $charge Encounter/{rid}")  # concurrent $charge of one encounter: one after the other
        prices = price_list(repo)
        out: list[dict[str, Any]] = []
        for service in self._services(repo, rid, encounter):
            existing = repo.find_ids("ChargeItem", [("identifier", f"{CHARGE_SOURCE}|{service.source}")], limit=1)
            if existing:
                out.append(repo.read("ChargeItem", existing[0]).content or {})
                continue
            definition = find_price(prices, service.codings)
            if definition is None:
                codes = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in service.codings) or "no code"
                raise rule_violation(422, "billing-no-price", f"{service.source} ({codes}) has no active "
                                     "ChargeItemDefinition in the price list", (service.source,))
            item: dict[str, Any] = {
                "resourceType": "ChargeItem", "status": "billable",
                "identifier": [{"system": CHARGE_SOURCE, "value": service.source}],
                "definitionCanonical": [definition["url"]], "code": definition["code"],
                "subject": {"reference": patient}, "context": {"reference": f"Encounter/{rid}"},
                "quantity": {"value": service.quantity}}
            if service.when:
                item["occurrenceDateTime"] = service.when
            if service.service:
                item["service"] = [{"reference": service.service}]
            out.append(repo.create("ChargeItem", item).content or {})
        return out

    def _services(self, repo: Repository, rid: str, encounter: dict[str, Any]) -> list[Service]:
        rules, ref = self.rules, f"Encounter/{rid}"
        own = {"system": rules.service_system}
        klass = (encounter.get("class") or {}).get("code")
        ended = (encounter.get("period") or {}).get("end")
        out: list[Service] = []
        if klass == "AMB" and encounter.get("status") == "finished":
            out.append(Service(ref, [*_codings(encounter.get("serviceType"), *(encounter.get("type") or [])),
                                     {**own, "code": rules.consultation_code}], 1, ended))
        for did in repo.find_ids("DiagnosticReport", [("encounter", ref), ("status", "final")], limit=1000):
            report = repo.read("DiagnosticReport", did).content or {}
            out.append(Service(f"DiagnosticReport/{did}", _codings(report.get("code")), 1,
                               report.get("issued") or report.get("effectiveDateTime"), f"DiagnosticReport/{did}"))
        for mid in repo.find_ids("MedicationDispense", [("context", ref), ("status", "completed")], limit=1000):
            dispense = repo.read("MedicationDispense", mid).content or {}
            concept = dispense.get("medicationCodeableConcept")
            med_ref = (dispense.get("medicationReference") or {}).get("reference", "")
            if concept is None and med_ref.startswith("Medication/"):
                concept = (repo.read("Medication", med_ref.split("/", 1)[1]).content or {}).get("code")
            out.append(Service(f"MedicationDispense/{mid}", _codings(concept),
                               (dispense.get("quantity") or {}).get("value", 1),
                               dispense.get("whenHandedOver"), f"MedicationDispense/{mid}"))
        if klass == "IMP":
            for i, stay in enumerate(encounter.get("location") or []):
                period = dict(stay.get("period") or {})
                period.setdefault("end", ended) if ended else None
                if not period.get("start") or not period.get("end"):
                    continue  # still in that bed: charged once the stay there ends
                loc = (stay.get("location") or {}).get("reference", "")
                types = (repo.read("Location", loc.split("/", 1)[1]).content or {}).get("type") or [] \
                    if loc.startswith("Location/") else []
                out.append(Service(f"{ref}/location/{i}", [*_codings(*types), {**own, "code": rules.bed_day_code}],
                                   _nights(period), period["end"]))
        return out
