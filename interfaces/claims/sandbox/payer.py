"""The simulated payer's answers: FHIR bundles in the NRCeS 6.5.0 shapes, built from what it was sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

NRCES = "https://nrces.in/ndhm/fhir/r4/StructureDefinition/"


def _anchor(bundle: dict[str, Any], rtype: str) -> tuple[str, dict[str, Any]]:
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == rtype:
            return str(entry.get("fullUrl", "")), resource
    raise ValueError(f"no {rtype} in the bundle")


def _bundle(profile: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    bundle_id = str(uuid.uuid4())
    return {"resourceType": "Bundle", "id": bundle_id, "meta": {"profile": [NRCES + profile]},
            "identifier": {"value": bundle_id}, "type": "collection",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}


def eligibility_response(request_bundle: dict[str, Any]) -> dict[str, Any]:
    url, req = _anchor(request_bundle, "CoverageEligibilityRequest")
    resp = {"resourceType": "CoverageEligibilityResponse", "id": str(uuid.uuid4()),
            "meta": {"profile": [NRCES + "CoverageEligibilityResponse"]},
            "status": "active", "purpose": req.get("purpose") or ["validation"],
            "patient": req.get("patient"), "created": datetime.now(UTC).date().isoformat(),
            "request": {"reference": url}, "outcome": "complete", "disposition": "Policy in force",
            "insurer": req.get("insurer"),
            "insurance": [{"coverage": i.get("coverage"), "inforce": True} for i in req.get("insurance") or []]}
    return _bundle("CoverageEligibilityResponseBundle", [resp])


def claim_response(request_bundle: dict[str, Any], *, outcome: str = "complete", approved: bool = True,
                   note: str | None = None) -> dict[str, Any]:
    url, claim = _anchor(request_bundle, "Claim")
    total = sum(float((i.get("net") or i.get("unitPrice") or {}).get("value") or 0) for i in claim.get("item") or [])
    currency = next((((i.get("net") or i.get("unitPrice") or {}).get("currency")) for i in claim.get("item") or []
                     if (i.get("net") or i.get("unitPrice"))), "INR")
    resp: dict[str, Any] = {
        "resourceType": "ClaimResponse", "id": str(uuid.uuid4()), "meta": {"profile": [NRCES + "ClaimResponse"]},
        "status": "active", "type": claim.get("type"), "use": claim.get("use"), "patient": claim.get("patient"),
        "created": datetime.now(UTC).date().isoformat(), "insurer": claim.get("insurer"),
        "request": {"reference": url}, "outcome": outcome,
        "disposition": note or ("Approved" if approved else "Rejected")}
    if claim.get("use") == "preauthorization" and approved:
        resp["preAuthRef"] = f"PA-{resp['id'][:8]}"
    if approved:
        resp["total"] = [{"category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication",
                                                   "code": "benefit"}]},
                          "amount": {"value": total, "currency": currency}}]
    return _bundle("ClaimResponseBundle", [resp])


def communication_request(request_bundle: dict[str, Any], question: str) -> dict[str, Any]:
    url, claim = _anchor(request_bundle, "Claim")
    comm = {"resourceType": "CommunicationRequest", "id": str(uuid.uuid4()),
            "meta": {"profile": [NRCES + "CommunicationRequest"]}, "status": "active",
            "subject": claim.get("patient"), "about": [{"reference": url}],
            "payload": [{"contentString": question}], "authoredOn": datetime.now(UTC).isoformat(timespec="seconds"),
            "sender": claim.get("insurer")}
    return _bundle("TaskBundle", [comm])


def payment_notice(request_bundle: dict[str, Any], amount: float, currency: str = "INR") -> dict[str, Any]:
    url, claim = _anchor(request_bundle, "Claim")
    notice_id = str(uuid.uuid4())
    notice = {"resourceType": "PaymentNotice", "id": notice_id, "meta": {"profile": [NRCES + "PaymentNotice"]},
              "status": "active", "request": {"reference": url}, "created": datetime.now(UTC).date().isoformat(),
              "payment": {"reference": f"urn:uuid:{notice_id}-rec"}, "recipient": claim.get("provider") or {},
              "amount": {"value": amount, "currency": currency},
              "paymentDate": datetime.now(UTC).date().isoformat()}
    rec = {"resourceType": "PaymentReconciliation", "id": f"{notice_id}-rec",
           "meta": {"profile": [NRCES + "PaymentReconciliation"]}, "status": "active",
           "created": datetime.now(UTC).date().isoformat(), "paymentDate": datetime.now(UTC).date().isoformat(),
           "paymentAmount": {"value": amount, "currency": currency}, "outcome": "complete",
           "paymentIdentifier": {"value": f"UTR{notice_id[:8].upper()}"},
           "detail": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payment-type",
                                            "code": "payment"}]}, "request": {"reference": url},
                       "amount": {"value": amount, "currency": currency}}]}
    task = {"resourceType": "Task", "id": str(uuid.uuid4()), "meta": {"profile": [NRCES + "Task"]},
            "status": "requested", "intent": "order",
            "code": {"coding": [{"system": "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-task-codes",
                                 "code": "deliver"}]},
            "focus": {"reference": url}, "input": [
                {"type": {"text": "PaymentNotice"}, "valueReference": {"reference": f"urn:uuid:{notice_id}"}},
                {"type": {"text": "PaymentReconciliation"},
                 "valueReference": {"reference": f"urn:uuid:{notice_id}-rec"}}]}
    return _bundle("TaskBundle", [task, notice, rec])


def claim_total(request_bundle: dict[str, Any]) -> float:
    _, claim = _anchor(request_bundle, "Claim")
    total = claim.get("total") or {}
    if total.get("value") is not None:
        return float(total["value"])
    return sum(float((i.get("net") or {}).get("value") or 0) for i in claim.get("item") or [])


def status_response(request_bundle: dict[str, Any], *, decided: bool) -> dict[str, Any]:
    """/hcx/on_status: the status Task answered (NRCeS TaskBundle), ``businessStatus`` saying where it stands."""
    asked = next((e.get("resource") or {} for e in request_bundle.get("entry") or []
                  if (e.get("resource") or {}).get("resourceType") == "Task"), {})
    task = {**asked, "id": str(uuid.uuid4()), "status": "completed" if decided else "in-progress",
            "businessStatus": {"text": "Decided" if decided else "Under review"},
            "lastModified": datetime.now(UTC).isoformat(timespec="seconds")}
    return _bundle("TaskBundle", [task])


def task_response(request_bundle: dict[str, Any]) -> dict[str, Any]:
    """/task/on_submit: the cancel / reprocess Task, done."""
    asked = next((e.get("resource") or {} for e in request_bundle.get("entry") or []
                  if (e.get("resource") or {}).get("resourceType") == "Task"), {})
    codes = {c.get("code") for c in (asked.get("code") or {}).get("coding") or []}
    task = {**asked, "id": str(uuid.uuid4()), "status": "completed",
            "businessStatus": {"text": "Cancelled" if "cancel" in codes else "Reprocessed"}}
    return _bundle("TaskBundle", [task])


def insurance_plan(request_bundle: dict[str, Any]) -> dict[str, Any]:
    """/insuranceplan/on_request: the policy's plan (NRCeS InsurancePlanBundle)."""
    limit = {"value": {"value": 5000, "unit": "INR"}}
    plan = {"resourceType": "InsurancePlan", "id": str(uuid.uuid4()), "meta": {"profile": [NRCES + "InsurancePlan"]},
            "status": "active", "name": "Sandbox Health Shield", "period": {"start": "2026-01-01", "end": "2026-12-31"},
            "coverage": [{"type": {"text": "Inpatient"}, "benefit": [
                {"type": {"text": "Room rent per day"}, "limit": [limit]}]}],
            "plan": [{"type": {"text": "Individual"}, "generalCost": [{"cost": {"value": 500000, "currency": "INR"}}]}]}
    return _bundle("InsurancePlanBundle", [plan])
