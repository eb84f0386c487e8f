"""Protocol calls about an exchange rather than new claims, as FHIR operations (each queued through the outbox):

- ``POST Claim/[id]/$inquire`` (or CoverageEligibilityRequest; Parameters ``correlationId`` optional, else
  the latest open HCX exchange) -> ``/hcx/status`` on that exchange; the payer's ``/hcx/on_status`` is
  recorded on it (apply.py).
- ``POST Claim/[id]/$task`` (Parameters ``code`` = ``cancel`` | ``reprocess``) -> NHCX ``/task/submit``, a new
  exchange with the claim's payer; a completed ``cancel`` makes the Claim ``cancelled``.
- ``POST CoverageEligibilityRequest/[id]/$insurance-plan`` -> NHCX ``/insuranceplan/request``; the
  ``InsurancePlan`` of ``/insuranceplan/on_request`` is stored and linked from the exchange.

The payload is a NRCeS TaskBundle whose Task names the anchor by its own business identifier (and, for the
plan, the coverage by its policy identifier): nothing else of the patient's leaves. The caller needs read
access to the anchor (and write access for ``$task`` / ``$insurance-plan``: a new exchange is recorded on it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fhir_server.config import Settings
from fhir_server.errors import INVALID, PROCESSING, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository
from interfaces.claims import bundles, fhir_payer
from interfaces.claims import protocol as p
from interfaces.claims.exchange import CORRELATION_SYSTEM, Cycle, cycles, with_cycle
from interfaces.claims.gateway import Outgoing
from interfaces.claims.operations import accepted, payer_code
from interfaces.claims.outbound import enqueue

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

OD = "urn:fhir-server:OperationDefinition:claims-"
FINANCIAL_TASK = "http://terminology.hl7.org/CodeSystem/financialtaskcode"
TASK_CODES = ("cancel", "reprocess")
CLAIM_ACTIONS = (p.PREDETERMINATION, p.PREAUTH, p.CLAIM)


def task_bundle(anchor: dict[str, Any], rtype: str, code: dict[str, Any],
                inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    task_id, bundle_id = p.new_id(), p.new_id()
    own = [i for i in anchor.get("identifier") or [] if i.get("system") != CORRELATION_SYSTEM]
    task: dict[str, Any] = {"resourceType": "Task", "id": task_id, "meta": {"profile": [bundles.NRCES + "Task"]},
                            "status": "requested", "intent": "order", "code": code,
                            "focus": {"type": rtype, **({"identifier": own[0]} if own else {"display": rtype})},
                            "authoredOn": datetime.now(UTC).isoformat(timespec="seconds")}
    if inputs:
        task["input"] = inputs
    return {"resourceType": "Bundle", "id": bundle_id, "type": "collection", "identifier": {"value": bundle_id},
            "meta": {"profile": [bundles.NRCES + "TaskBundle"]},
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "entry": [{"fullUrl": f"urn:uuid:{task_id}", "resource": task}]}


def _param(req: FhirRequest, name: str) -> str | None:
    if req.body or req.resource is not None:
        body = req.json_body()
        for param in body.get("parameter") or [] if isinstance(body, dict) else []:
            value = param.get("valueString") or param.get("valueCode")
            if param.get("name") == name and value:
                return str(value)
    return req.param(name)


def _hcx_cycles(anchor: dict[str, Any]) -> list[Cycle]:
    return [c for c in cycles(anchor) if not fhir_payer.is_fhir_payer(c.payer)]


class Tasks:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _send(self, repo: Repository, rtype: str, rid: str, anchor: dict[str, Any], action: str, payer: str,
              bundle: dict[str, Any], workflow: str | None, version: int) -> FhirResponse:
        """A new exchange on the anchor, its message queued."""
        cycle = Cycle(p.new_id(), action, payer, "queued", workflow)
        repo.update(rtype, rid, with_cycle(anchor, cycle), if_match=version)
        enqueue(repo, f"{rtype}/{rid}", Outgoing(action, payer, cycle.correlation_id, p.new_id(), bundle, workflow),
                max_attempts=self.settings.claims_max_attempts, patient=(anchor.get("patient") or {}).get("reference"))
        return accepted(cycle.correlation_id, action, payer)

    def _workflow(self, nhcx: str) -> str:
        return nhcx if self.settings.claims_flavour == "nhcx" else p.new_id()

    def inquire(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if rtype is None or rid is None:
            raise FhirError(400, INVALID, "$inquire runs on one resource: POST [type]/[id]/$inquire")
        anchor = repo.read(rtype, rid).content or {}
        wanted = _param(req, "correlationId")
        found = [c for c in _hcx_cycles(anchor) if (c.correlation_id == wanted if wanted else c.open)]
        if not found:
            raise FhirError(422, PROCESSING, f"This {rtype} has no open HCX exchange to ask about",
                            ("correlationId",) if wanted else (f"{rtype}.extension",))
        cycle = found[-1]
        code = {"coding": [{"system": FINANCIAL_TASK, "code": "status"}]}
        enqueue(repo, f"{rtype}/{rid}", Outgoing(p.STATUS_REQUEST, cycle.payer, cycle.correlation_id, p.new_id(),
                                                 task_bundle(anchor, rtype, code), cycle.workflow_id),
                max_attempts=self.settings.claims_max_attempts, patient=(anchor.get("patient") or {}).get("reference"))
        return accepted(cycle.correlation_id, p.STATUS_REQUEST, cycle.payer)

    def task(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if rtype != "Claim" or rid is None:
            raise FhirError(400, INVALID, "$task runs on one claim: POST Claim/[id]/$task")
        code = _param(req, "code")
        if code not in TASK_CODES:
            raise FhirError(400, INVALID, "code must be cancel or reprocess", ("code",))
        anchor = repo.read(rtype, rid).content or {}  # 404 / 403 for the caller first
        current = repo.current(rtype, rid, for_update=True)
        assert current is not None
        sent = [c for c in _hcx_cycles(anchor) if c.action in CLAIM_ACTIONS]
        if not sent:
            raise FhirError(422, PROCESSING, "This Claim was never submitted over HCX", ("Claim.extension",))
        workflow = "122" if code == "cancel" and sent[-1].action == p.PREAUTH else "18" if code == "reprocess" \
            else "1"  # NHCX doc 3.6 [UNCONFIRMED]
        bundle = task_bundle(anchor, rtype, {"coding": [{"system": FINANCIAL_TASK, "code": code}]})
        return self._send(repo, rtype, rid, anchor, p.TASK_SUBMIT, sent[-1].payer, bundle, self._workflow(workflow),
                          current.version_id)

    def insurance_plan(self, req: FhirRequest, repo: Repository, rtype: str | None, rid: str | None) -> FhirResponse:
        if rtype != "CoverageEligibilityRequest" or rid is None:
            raise FhirError(400, INVALID, "$insurance-plan runs on one CoverageEligibilityRequest")
        anchor = repo.read(rtype, rid).content or {}  # 404 / 403 for the caller first
        current = repo.current(rtype, rid, for_update=True)
        assert current is not None
        payer = payer_code(self.settings, repo, anchor, rtype)
        inputs = []
        for ins in anchor.get("insurance") or []:
            ref = str((ins.get("coverage") or {}).get("reference") or "")
            if ref.startswith("Coverage/"):
                coverage = repo.read("Coverage", ref.split("/", 1)[1]).content or {}
                inputs += [{"type": {"text": "policy"}, "valueIdentifier": i} for i in coverage.get("identifier") or []]
        if not inputs:
            raise FhirError(422, INVALID, "The coverage has no policy identifier to ask the plan of",
                            ("CoverageEligibilityRequest.insurance.coverage",))
        code = {"text": "insuranceplan"}  # NRCeS names no code for the plan request [UNCONFIRMED]
        bundle = task_bundle(anchor, rtype, code, inputs)
        return self._send(repo, rtype, rid, anchor, p.INSURANCE_PLAN, payer, bundle, self._workflow("1"),
                          current.version_id)


def register(server: FhirServer) -> None:
    tasks = Tasks(server.settings)
    both = frozenset({"Claim", "CoverageEligibilityRequest"})
    ops = server.operations
    ops.register(Operation("inquire", tasks.inquire, OD + "inquire", types=both, instance=True, affects_state=True))
    ops.register(Operation("task", tasks.task, OD + "task", types=frozenset({"Claim"}), instance=True,
                           affects_state=True))
    ops.register(Operation("insurance-plan", tasks.insurance_plan, OD + "insurance-plan",
                           types=frozenset({"CoverageEligibilityRequest"}), instance=True, affects_state=True))
