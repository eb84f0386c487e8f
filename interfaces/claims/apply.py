"""What a checked callback does to our records, inside the anchor's locked unit of work.

- on_check / on_submit with a bundle: the payer's CoverageEligibilityResponse / ClaimResponse stored (one per
  cycle: ``response.partial`` creates it, later messages update it) and linked to the anchor (``request``),
  its patient, insurer and requestor ours; ``response.complete`` closes the cycle.
- ``response.error``: x-hcx-error_details recorded on the cycle; ``response.redirect``: the same request
  re-sent (same correlation id) to ``x-hcx-redirect_to``.
- ``/communication/request``: a CommunicationRequest for billing staff (about the claim, for its patient),
  answered with ``Communication/[id]/$submit``.
- ``/paymentnotice/request``: PaymentNotice + PaymentReconciliation stored, and acknowledged
  (``/paymentnotice/on_request``, through the outbox).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fhir_server.binary.store import open_store
from fhir_server.config import Settings
from fhir_server.storage.repository import Repository
from interfaces.claims import bundles
from interfaces.claims import protocol as p
from interfaces.claims.exchange import CORRELATION_SYSTEM, Cycle
from interfaces.claims.gateway import Outgoing
from interfaces.claims.outbound import enqueue

RESPONSE_TYPE = {"Claim": "ClaimResponse", "CoverageEligibilityRequest": "CoverageEligibilityResponse"}


def _entries(bundle: dict[str, Any] | None, rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in (bundle or {}).get("entry") or []
            if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == rtype]


def _local(resource: dict[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
    """The payer's resource without its ids and references into its bundle (we set ours)."""
    return {k: v for k, v in resource.items() if k in keep}


class Applier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def apply(self, repo: Repository, path: str, headers: dict[str, Any], bundle: dict[str, Any] | None,
              rtype: str, rid: str, anchor: dict[str, Any], cycle: Cycle) -> dict[str, Any]:
        status = headers.get(p.STATUS)
        if path == p.COMMUNICATION_REQUEST:
            self._communication_request(repo, bundle, rtype, rid, anchor, cycle)
        elif path == p.PAYMENT_REQUEST:
            self._payment(repo, headers, bundle, rtype, rid, anchor, cycle)
        elif status == p.ERROR:
            details = headers.get(p.ERROR_DETAILS) or {}
            cycle.status = "error"
            cycle.error = f"{details.get('code', 'ERR_UNKNOWN')}: {details.get('message', '')}"[:500]
        elif status == p.REDIRECT:
            self._redirect(repo, headers, rtype, rid, anchor, cycle)
        elif path == p.on_action(p.STATUS_REQUEST):
            self._status(repo, headers, bundle, rtype, rid, anchor, cycle)
        elif path == p.on_action(p.TASK_SUBMIT):
            anchor = self._task(bundle, anchor, cycle, status)
        elif path == p.on_action(p.INSURANCE_PLAN):
            self._insurance_plan(repo, bundle, rtype, rid, anchor, cycle)
        else:
            self._response(repo, bundle, rtype, rid, anchor, cycle, status)
        return anchor

    def _response(self, repo: Repository, bundle: dict[str, Any] | None, rtype: str, rid: str,
                  anchor: dict[str, Any], cycle: Cycle, status: str | None) -> None:
        kind = RESPONSE_TYPE[rtype]
        found = _entries(bundle, kind)
        if not found:
            cycle.status, cycle.error = "error", f"{p.ERR_WRONG_DOMAIN_PAYLOAD}: no {kind} in the payload"
            return
        theirs = found[0]
        keep = ("status", "type", "subType", "use", "purpose", "created", "outcome", "disposition", "preAuthRef",
                "preAuthPeriod", "payeeType", "item", "addItem", "adjudication", "total", "payment", "processNote",
                "error", "servicedDate", "servicedPeriod", "form", "fundsReserve")
        response = _local(theirs, keep)
        response.update({"resourceType": kind, "request": {"reference": f"{rtype}/{rid}"},
                         "patient": anchor.get("patient"), "insurer": anchor.get("insurer"),
                         "identifier": [{"system": CORRELATION_SYSTEM, "value": cycle.correlation_id}]})
        response.setdefault("status", "active")
        response.setdefault("created", datetime.now(UTC).date().isoformat())
        if kind == "ClaimResponse":
            response.setdefault("type", anchor.get("type"))
            response.setdefault("use", anchor.get("use"))
            if anchor.get("provider"):
                response["requestor"] = anchor["provider"]
        else:
            response.setdefault("purpose", anchor.get("purpose") or ["validation"])
            response["insurance"] = [{"coverage": i.get("coverage"), "inforce": i2.get("inforce")}
                                     for i, i2 in zip(anchor.get("insurance") or [], theirs.get("insurance") or [],
                                                      strict=False)] or None
            if response["insurance"] is None:
                response.pop("insurance")
            if anchor.get("provider"):
                response["requestor"] = anchor["provider"]
        response["outcome"] = "partial" if status == p.PARTIAL else theirs.get("outcome") or "complete"
        if cycle.response:
            rid2 = cycle.response.split("/", 1)[1]
            repo.update(kind, rid2, {**response, "id": rid2})
        else:
            cycle.response = f"{kind}/{repo.create(kind, response).id}"
        cycle.status = "partial" if status == p.PARTIAL else "complete"
        cycle.error = None

    def _status(self, repo: Repository, headers: dict[str, Any], bundle: dict[str, Any] | None, rtype: str,
                rid: str, anchor: dict[str, Any], cycle: Cycle) -> None:
        """/hcx/on_status: the payer's Task says where our request stands (``status: businessStatus``); a
        response it carries is applied as the on_submit / on_check would be."""
        cycle.payer_status = self._said((_entries(bundle, "Task") or [{}])[0])
        if _entries(bundle, RESPONSE_TYPE[rtype]):
            self._response(repo, bundle, rtype, rid, anchor, cycle, headers.get(p.STATUS))

    @staticmethod
    def _said(task: dict[str, Any]) -> str | None:
        business = task.get("businessStatus") or {}
        said = business.get("text") or next((c.get("display") or c.get("code") for c in business.get("coding") or []),
                                            None)
        return ": ".join(str(x) for x in (task.get("status"), said) if x)[:200] or None

    def _task(self, bundle: dict[str, Any] | None, anchor: dict[str, Any], cycle: Cycle,
              status: str | None) -> dict[str, Any]:
        """/task/on_submit: the payer's Task says what became of our cancel / reprocess; a completed cancel
        withdraws the Claim (status cancelled)."""
        task = (_entries(bundle, "Task") or [{}])[0]
        cycle.payer_status = self._said(task)
        cycle.status = "partial" if status == p.PARTIAL else "complete"
        codes = {c.get("code") for c in (task.get("code") or {}).get("coding") or []}
        if "cancel" in codes and task.get("status") == "completed" and anchor.get("status") != "cancelled":
            return {**anchor, "status": "cancelled"}
        return anchor

    def _insurance_plan(self, repo: Repository, bundle: dict[str, Any] | None, rtype: str, rid: str,
                        anchor: dict[str, Any], cycle: Cycle) -> None:
        """/insuranceplan/on_request: the payer's InsurancePlan stored (ours: owned by the insurer)."""
        found = _entries(bundle, "InsurancePlan")
        if not found:
            cycle.status, cycle.error = "error", f"{p.ERR_WRONG_DOMAIN_PAYLOAD}: no InsurancePlan in the payload"
            return
        plan = _local(found[0], ("status", "type", "name", "alias", "period", "coverage", "plan"))
        plan.update({"resourceType": "InsurancePlan",
                     "identifier": [{"system": CORRELATION_SYSTEM, "value": cycle.correlation_id}]})
        if anchor.get("insurer"):
            plan["ownedBy"] = anchor["insurer"]
        if cycle.response:
            repo.update("InsurancePlan", cycle.response.split("/", 1)[1], {**plan, "id": cycle.response.split("/")[1]})
        else:
            cycle.response = f"InsurancePlan/{repo.create('InsurancePlan', plan).id}"
        cycle.status, cycle.error = "complete", None

    def _redirect(self, repo: Repository, headers: dict[str, Any], rtype: str, rid: str, anchor: dict[str, Any],
                  cycle: Cycle) -> None:
        target = str(headers.get(p.REDIRECT_TO) or "")
        if not target or target == cycle.payer:
            cycle.status, cycle.error = "error", f"{p.ERR_INVALID_REDIRECT_TO}: {target or 'missing'}"
            return
        cycle.payer, cycle.status = target, "queued"
        bundle = bundles.build(repo, rtype, rid, store=open_store(self.settings))
        message = Outgoing(cycle.action, target, cycle.correlation_id, p.new_id(), bundle, cycle.workflow_id)
        enqueue(repo, f"{rtype}/{rid}", message, max_attempts=self.settings.claims_max_attempts,
                patient=(anchor.get("patient") or {}).get("reference"))

    def _communication_request(self, repo: Repository, bundle: dict[str, Any] | None, rtype: str, rid: str,
                               anchor: dict[str, Any], cycle: Cycle) -> None:
        asked = _entries(bundle, "CommunicationRequest")
        theirs = asked[0] if asked else {}
        request = {"resourceType": "CommunicationRequest", "status": "active",
                   "identifier": [{"system": CORRELATION_SYSTEM, "value": cycle.correlation_id}],
                   "subject": anchor.get("patient"), "about": [{"reference": f"{rtype}/{rid}"}],
                   "authoredOn": theirs.get("authoredOn") or datetime.now(UTC).isoformat(timespec="seconds"),
                   "sender": {"identifier": {"system": self.settings.claims_participant_system,
                                             "value": cycle.payer}},
                   "category": [{"text": "insurer query"}]}
        payload = [{"contentString": pl["contentString"]} for pl in theirs.get("payload") or []
                   if isinstance(pl.get("contentString"), str)]
        if payload:
            request["payload"] = payload
        repo.create("CommunicationRequest", request)

    def _payment(self, repo: Repository, headers: dict[str, Any], bundle: dict[str, Any] | None, rtype: str,
                 rid: str, anchor: dict[str, Any], cycle: Cycle) -> None:
        claim = {"reference": f"{rtype}/{rid}"}
        today = datetime.now(UTC).date().isoformat()
        theirs_rec = (_entries(bundle, "PaymentReconciliation") or [{}])[0]
        theirs_notice = (_entries(bundle, "PaymentNotice") or [{}])[0]
        amount = theirs_notice.get("amount") or theirs_rec.get("paymentAmount") or {"value": 0, "currency": "INR"}
        reconciliation = {"resourceType": "PaymentReconciliation", "status": "active", "created": today,
                          "identifier": [{"system": CORRELATION_SYSTEM, "value": cycle.correlation_id}],
                          "paymentDate": theirs_rec.get("paymentDate") or today, "paymentAmount": amount,
                          "outcome": theirs_rec.get("outcome") or "complete",
                          "detail": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payment-type",
                                                           "code": "payment"}]},
                                      "request": claim, "amount": amount}]}
        if theirs_rec.get("paymentIdentifier"):
            reconciliation["paymentIdentifier"] = theirs_rec["paymentIdentifier"]
        rec = repo.create("PaymentReconciliation", reconciliation)
        notice = {"resourceType": "PaymentNotice", "status": "active", "created": today, "request": claim,
                  "identifier": [{"system": CORRELATION_SYSTEM, "value": cycle.correlation_id}],
                  "payment": {"reference": rec.reference}, "amount": amount,
                  "recipient": anchor.get("provider") or {"display": "provider"},
                  "paymentDate": theirs_notice.get("paymentDate") or today}
        repo.create("PaymentNotice", notice)
        ack_id = str(uuid.uuid4())
        ack = {"resourceType": "Bundle", "id": ack_id, "type": "collection", "identifier": {"value": ack_id},
               "meta": {"profile": [bundles.NRCES + "TaskBundle"]},
               "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
               "entry": [{"fullUrl": f"urn:uuid:{ack_id}-task", "resource": {
                   "resourceType": "Task", "id": f"{ack_id}-task", "status": "completed", "intent": "order",
                   "code": {"coding": [{"system": "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-task-codes",
                                        "code": "deliver"}]},
                   "output": [{"type": {"text": "PaymentNotice acknowledged"}, "valueString": "received"}]}}]}
        workflow = "17" if self.settings.claims_flavour == "nhcx" else cycle.workflow_id
        enqueue(repo, f"{rtype}/{rid}", Outgoing("/paymentnotice/on_request", str(headers[p.SENDER]),
                                                 cycle.correlation_id, p.new_id(), ack, workflow, p.COMPLETE),
                max_attempts=self.settings.claims_max_attempts, patient=(anchor.get("patient") or {}).get("reference"))
