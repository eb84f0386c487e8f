"""``POST Invoice/[id]/$claim`` (Parameters: ``preauthorization`` = Reference(Claim), optional): the claim
for the hospital's invoice. A new Claim (``use`` claim, ``status`` active) whose items are the invoice's line
items (``chargeItemCodeableConcept`` -> ``productOrService``, the ``base`` price component -> ``net``), whose
patient and provider are the invoice's subject and issuer, and whose total is ``totalGross``
(else ``totalNet``); from the pre-authorisation it takes insurer, insurance (with the payer's ``preAuthRef``),
type, priority, diagnoses, supporting information and encounters. Answers 201 with the Claim; send it with
``Claim/[id]/$submit``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fhir_server.errors import INVALID, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

DEFINITION = "urn:fhir-server:OperationDefinition:invoice-claim"
COPIED = ("insurer", "type", "priority", "diagnosis", "supportingInfo", "careTeam", "procedure", "facility",
          "enterer")


def _param(req: FhirRequest, name: str) -> str | None:
    if req.body or req.resource is not None:
        body = req.json_body()
        for p in body.get("parameter") or [] if isinstance(body, dict) else []:
            if p.get("name") == name:
                ref = (p.get("valueReference") or {}).get("reference")
                return str(ref) if ref else None
    return req.param(name)


def _net(line: dict[str, Any]) -> dict[str, Any] | None:
    components = line.get("priceComponent") or []
    base = next((c for c in components if c.get("type") == "base"), components[0] if components else None)
    return (base or {}).get("amount")


def claim_from_invoice(req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
    if rid is None:
        raise FhirError(400, INVALID, "$claim runs on one invoice: POST Invoice/[id]/$claim")
    invoice = repo.read("Invoice", rid).content or {}
    if not (invoice.get("subject") or {}).get("reference", "").startswith("Patient/"):
        raise FhirError(422, INVALID, "Invoice.subject must be the Patient", ("Invoice.subject",))
    claim: dict[str, Any] = {"resourceType": "Claim", "status": "active", "use": "claim",
                             "identifier": [{"system": "urn:fhir-server:invoice", "value": f"Invoice/{rid}"}],
                             "patient": invoice["subject"], "created": datetime.now(UTC).date().isoformat(),
                             "provider": invoice.get("issuer")}
    items = []
    for n, line in enumerate(invoice.get("lineItem") or [], start=1):
        product = line.get("chargeItemCodeableConcept")
        if not product:
            raise FhirError(422, INVALID, "each Invoice.lineItem needs chargeItemCodeableConcept (the claimed "
                                          "service)", (f"Invoice.lineItem[{n - 1}].chargeItemCodeableConcept",))
        item: dict[str, Any] = {"sequence": n, "productOrService": product}
        net = _net(line)
        if net:
            item["net"] = net
        items.append(item)
    if not items:
        raise FhirError(422, INVALID, "The invoice has no line items", ("Invoice.lineItem",))
    pre_ref = _param(req, "preauthorization")
    if pre_ref:
        if not pre_ref.startswith("Claim/"):
            raise FhirError(400, INVALID, "preauthorization must reference a Claim", ("preauthorization",))
        pre = repo.read("Claim", pre_ref.split("/", 1)[1]).content or {}
        if pre.get("patient") != claim["patient"]:
            raise FhirError(422, INVALID, "The pre-authorisation is for another patient", ("preauthorization",))
        claim.update({k: pre[k] for k in COPIED if k in pre})
        responses = repo.find_ids("ClaimResponse", [("request", pre_ref)], limit=1)
        pre_auth_ref = (repo.read("ClaimResponse", responses[0]).content or {}).get("preAuthRef") if responses \
            else None
        claim["insurance"] = [{**ins, **({"preAuthRef": [pre_auth_ref]} if pre_auth_ref else {})}
                              for ins in pre.get("insurance") or []]
        encounters = [e for i in pre.get("item") or [] for e in i.get("encounter") or []]
        if encounters:
            for item in items:
                item["encounter"] = encounters
        claim["related"] = [{"claim": {"reference": pre_ref}}]
    claim["item"] = items
    total = invoice.get("totalGross") or invoice.get("totalNet")
    if total:
        claim["total"] = total
    created = repo.create("Claim", claim)
    return FhirResponse(201, created.content, headers={"Location": f"Claim/{created.id}/_history/1"})


def register(server: FhirServer) -> None:
    server.operations.register(Operation("claim", claim_from_invoice, DEFINITION, types=frozenset({"Invoice"}),
                                         instance=True, affects_state=True))
