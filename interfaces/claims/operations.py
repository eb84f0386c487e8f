"""The provider's flows as FHIR operations on our server (each queues the protocol call behind it):

- ``POST CoverageEligibilityRequest/[id]/$submit`` -> ``/coverageeligibility/check``
- ``POST Claim/[id]/$submit`` -> ``/predetermination/submit``, ``/preauth/submit`` or ``/claim/submit`` by
  ``Claim.use``
- ``POST Communication/[id]/$submit`` (the answer to an insurer's CommunicationRequest, ``basedOn`` it) ->
  ``/communication/on_request`` on that claim's exchange
- ``$inquire``, ``$task``, ``$insurance-plan``: interfaces/claims/tasks.py

An insurer whose Organization has an active ``hl7-fhir-rest`` Endpoint is a FHIR-native payer instead
(interfaces/claims/fhir_payer.py): ``$submit`` then goes to its ``Claim/$submit`` /
``CoverageEligibilityRequest/$submit``, through the same outbox.

The caller's access applies throughout: it must be able to read everything the bundle holds and to update
the anchor (the new exchange is recorded on it). Answers 202 with a Parameters naming the correlation id;
the outcome arrives later as the payer's callback (poll the anchor, or search ClaimResponse?request=).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.binary import BinaryStorage
from fhir_server.config import Settings
from fhir_server.errors import INVALID, PROCESSING, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository
from interfaces.claims import bundles, fhir_payer
from interfaces.claims import protocol as p
from interfaces.claims.exchange import CORRELATION_SYSTEM, Cycle, cycles, find_anchor, with_cycle
from interfaces.claims.gateway import Outgoing
from interfaces.claims.outbound import enqueue

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

DEFINITION = "urn:fhir-server:OperationDefinition:claims-submit"
NHCX_WORKFLOW = {p.ELIGIBILITY: "1", p.PREDETERMINATION: "1", p.PREAUTH: "12", p.CLAIM: "15"}
NHCX_ANSWER_WORKFLOW = {p.PREAUTH: "19", p.CLAIM: "151"}  # query answered (NHCX doc 3.6, [UNCONFIRMED])
ABHA_SYSTEMS = ("https://healthid.abdm.gov.in", "https://healthid.ndhm.gov.in", "https://abha.abdm.gov.in")


def accepted(correlation_id: str, action: str, recipient: str) -> FhirResponse:
    return FhirResponse(202, {"resourceType": "Parameters", "parameter": [
        {"name": "correlationId", "valueString": correlation_id},
        {"name": "action", "valueString": action}, {"name": "recipient", "valueString": recipient},
        {"name": "status", "valueCode": "queued"}]})


def payer_code(settings: Settings, repo: Repository, anchor: dict[str, Any], rtype: str) -> str:
    """The participant code of the anchor's insurer (its Organization's identifier in our system)."""
    ref = (anchor.get("insurer") or {}).get("reference", "")
    if not ref.startswith("Organization/"):
        raise FhirError(422, INVALID, f"{rtype}.insurer must reference the payer's Organization",
                        (f"{rtype}.insurer",))
    org = repo.read("Organization", ref.split("/", 1)[1]).content or {}
    for ident in org.get("identifier") or []:
        if ident.get("system") == settings.claims_participant_system and ident.get("value"):
            return str(ident["value"])
    raise FhirError(422, INVALID, f"The insurer {ref} has no participant code (Organization.identifier with "
                                  f"system {settings.claims_participant_system})", (f"{rtype}.insurer",))


class Submit:
    def __init__(self, settings: Settings, binary: BinaryStorage) -> None:
        self.settings = settings
        self.binary = binary  # attachments pointing at our Binaries travel embedded

    def fhir_payer(self, repo: Repository, anchor: dict[str, Any]) -> str | None:
        ref = (anchor.get("insurer") or {}).get("reference", "")
        if not ref.startswith("Organization/"):
            return None
        return fhir_payer.fhir_endpoint(repo, repo.read("Organization", ref.split("/", 1)[1]).content or {})

    def extra_headers(self, repo: Repository, anchor: dict[str, Any]) -> dict[str, Any]:
        if self.settings.claims_flavour != "nhcx":
            return {}
        ref = (anchor.get("patient") or {}).get("reference", "")
        patient = repo.read("Patient", ref.split("/", 1)[1]).content or {} if ref.startswith("Patient/") else {}
        for ident in patient.get("identifier") or []:
            system = str(ident.get("system") or "")
            if system.rstrip("/") in ABHA_SYSTEMS or "abha" in str((ident.get("type") or {}).get("text", "")).lower():
                return {p.BEN_ABHA_ID: ident.get("value")}
        raise FhirError(422, INVALID, "NHCX needs the patient's ABHA number (x-hcx-ben-abha-id)",
                        ("Patient.identifier",))

    def __call__(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if rtype is None or rid is None:
            raise FhirError(400, INVALID, "$submit runs on one resource: POST [type]/[id]/$submit")
        if rtype == "Communication":
            return self.answer(repo, rid)
        current = repo.current(rtype, rid, for_update=True)
        anchor = repo.read(rtype, rid).content or {}
        assert current is not None
        if rtype == "Claim":
            action = p.USE_TO_ACTION.get(str(anchor.get("use")))
            if action is None:
                raise FhirError(422, INVALID, "Claim.use must be predetermination, preauthorization or claim",
                                ("Claim.use",))
        else:
            action = p.ELIGIBILITY
        if anchor.get("status") != "active":
            raise FhirError(422, PROCESSING, f"Only an active {rtype} is submitted", (f"{rtype}.status",))
        address = self.fhir_payer(repo, anchor)
        if address is not None:  # a FHIR-native payer (Da Vinci PAS style): the same outbox, no HCX envelope
            bundle = bundles.build(repo, rtype, rid, store=self.binary.store,
                                   profile=fhir_payer.PAS_BUNDLE if rtype == "Claim" else "")
            action = fhir_payer.ACTIONS[rtype]
            cycle = Cycle(p.new_id(), action, address, "queued")
            repo.update(rtype, rid, with_cycle(anchor, cycle), if_match=current.version_id)
            enqueue(repo, f"{rtype}/{rid}", Outgoing(action, address, cycle.correlation_id, p.new_id(), bundle),
                    max_attempts=self.settings.claims_max_attempts,
                    patient=(anchor.get("patient") or {}).get("reference"))
            return accepted(cycle.correlation_id, action, address)
        if not self.settings.claims_gateway_url:
            raise FhirError(422, PROCESSING, f"The insurer of this {rtype} has no FHIR endpoint and no HCX gateway is "
                                             "configured", (f"{rtype}.insurer",))
        payer = payer_code(self.settings, repo, anchor, rtype)
        extra = self.extra_headers(repo, anchor)
        bundle = bundles.build(repo, rtype, rid, store=self.binary.store)  # validated against the IG profile
        workflow = NHCX_WORKFLOW[action] if self.settings.claims_flavour == "nhcx" else p.new_id()
        cycle = Cycle(p.new_id(), action, payer, "queued", workflow)
        repo.update(rtype, rid, with_cycle(anchor, cycle), if_match=current.version_id)
        enqueue(repo, f"{rtype}/{rid}", Outgoing(action, payer, cycle.correlation_id, p.new_id(), bundle, workflow,
                                                 extra=extra),
                max_attempts=self.settings.claims_max_attempts, patient=(anchor.get("patient") or {}).get("reference"))
        return accepted(cycle.correlation_id, action, payer)

    def answer(self, repo: Repository, rid: str) -> FhirResponse:
        comm = repo.read("Communication", rid).content or {}
        based = [r.get("reference", "") for r in comm.get("basedOn") or []]
        request_ref = next((r for r in based if r.startswith("CommunicationRequest/")), None)
        if request_ref is None:
            raise FhirError(422, INVALID, "Communication.basedOn must reference the insurer's CommunicationRequest",
                            ("Communication.basedOn",))
        request = repo.read("CommunicationRequest", request_ref.split("/", 1)[1]).content or {}
        correlation = next((i.get("value") for i in request.get("identifier") or []
                            if i.get("system") == CORRELATION_SYSTEM), None)
        found = find_anchor(repo, str(correlation)) if correlation else None
        if found is None:
            raise FhirError(422, PROCESSING, f"{request_ref} is not an insurer's query on one of our exchanges",
                            ("Communication.basedOn",))
        rtype, anchor_id = found
        anchor = repo.read(rtype, anchor_id).content or {}
        cycle = next(c for c in cycles(anchor) if c.correlation_id == correlation)
        bundle = bundles.build(repo, "Communication", rid, store=self.binary.store)
        workflow = NHCX_ANSWER_WORKFLOW.get(cycle.action, cycle.workflow_id) \
            if self.settings.claims_flavour == "nhcx" else cycle.workflow_id
        enqueue(repo, f"{rtype}/{anchor_id}", Outgoing("/communication/on_request", cycle.payer, cycle.correlation_id,
                                                       p.new_id(), bundle, workflow, p.COMPLETE),
                max_attempts=self.settings.claims_max_attempts, patient=(anchor.get("patient") or {}).get("reference"))
        repo.update("CommunicationRequest", request_ref.split("/", 1)[1], {**request, "status": "completed"})
        return accepted(cycle.correlation_id, "/communication/on_request", cycle.payer)


def register(server: FhirServer) -> None:
    from interfaces.claims.invoice import register as register_invoice
    from interfaces.claims.tasks import register as register_tasks

    register_invoice(server)  # Invoice/[id]/$claim
    server.operations.register(Operation("submit", Submit(server.settings, server.binary), DEFINITION,
                                         types=frozenset({"Claim", "CoverageEligibilityRequest", "Communication"}),
                                         instance=True, affects_state=True))
    register_tasks(server)  # $inquire (/hcx/status), $task (/task/submit), $insurance-plan
