"""HIP-initiated linking: each new care context of a patient with an ABHA address is linked to their ABHA by
us, without the patient asking, and their app is told of it (API v3; PROTOCOLS.md §B4.2, §B5; care_abdm
``service/v3/gateway.py``).

A care context created (an Encounter, or a DiagnosticReport / DocumentReference outside any Encounter;
BEFORE_COMMIT, in its own transaction): a ``Task`` records the pending link and
``POST /v3/token/generate-token`` {abhaNumber, abhaAddress, name, gender, yearOfBirth} is enqueued ->
the gateway answers ``/api/v3/hip/token/on-generate-token`` {abhaAddress, linkToken, response.requestId} ->
we enqueue ``POST /hip/v3/link/carecontext`` (header ``X-LINK-TOKEN``) {abhaNumber, abhaAddress,
patient[{referenceNumber, display, careContexts[], hiType, count}]} -> ``/api/v3/link/on_carecontext``
confirms -> we enqueue the new-record notification ``POST /hip/v3/link/context/notify`` {notification:
{patient.id, careContext{patientReference, careContextReference}, hiTypes, date, hip}} (answered on
``/api/v3/links/context/on-notify``). The link token travels in the outbox row only until it is delivered.

A patient without an ABHA address who has a phone number gets the SMS deep link instead (``POST
/hip/v3/link/patient/links/sms/notify2`` {notification: {phoneNo, hip{id, name}}}; answered on
``/api/v3/patients/sms/on-notify``): the gateway texts them how to link this hospital's records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository, instant
from interfaces.abdm import identity
from interfaces.abdm.gateway import timestamp
from interfaces.abdm.service import Abdm

GENERATE_TOKEN = "/v3/token/generate-token"
LINK_CARE_CONTEXT = "/hip/v3/link/carecontext"
CONTEXT_NOTIFY = "/hip/v3/link/context/notify"
SMS_NOTIFY = "/hip/v3/link/patient/links/sms/notify2"
PENDING_SYSTEM = "urn:fhir-server:abdm-task/hip-link"
LINKED_SYSTEM = PENDING_SYSTEM + "/carecontext"  # our REQUEST-ID of the link/carecontext call


def _new_care_context(event: WriteEvent) -> bool:
    if event.interaction != "create" or event.resource is None or event.version is None:
        return False
    if event.resource_type == "Encounter":
        return True
    return event.resource_type in ("DiagnosticReport", "DocumentReference") and not event.resource.get("encounter")


def _phone(patient: dict[str, Any]) -> str | None:
    return next((str(t["value"]) for t in patient.get("telecom") or []
                 if isinstance(t, dict) and t.get("system") in ("phone", "sms") and t.get("value")), None)


def visit_hook(abdm: Abdm) -> Any:
    def hook(event: WriteEvent, repo: Repository | None) -> None:
        if repo is None or not _new_care_context(event):
            return
        assert event.resource is not None and event.version is not None
        subject = str(event.resource.get("subject", {}).get("reference", ""))
        if not subject.startswith("Patient/"):
            return
        patient = repo.current("Patient", subject.split("/", 1)[1])
        content = patient.content if patient is not None and not patient.deleted else None
        if not content:
            return
        reference = f"{event.resource_type}/{event.version.id}"
        addresses = identity.identifier_values(content, identity.ABHA_ADDRESS_SYSTEM)
        if not addresses:
            phone = _phone(content)
            if phone and abdm.settings.sms_deep_link:  # no ABHA yet: the gateway texts them how to link
                abdm.callback(repo, SMS_NOTIFY, {"notification": {
                    "phoneNo": phone, "hip": {"id": abdm.settings.hip_id, "name": abdm.settings.hip_name}}},
                    answering=None, headers=abdm.hip_headers(), key=f"sms:{reference}")
            return
        numbers = identity.identifier_values(content, identity.ABHA_NUMBER_SYSTEM)
        body: dict[str, Any] = {"abhaAddress": addresses[0], "name": identity.patient_name(content),
                                "gender": identity.GENDER.get(content.get("gender", ""), "U"),
                                "yearOfBirth": int(str(content.get("birthDate", "0"))[:4] or 0)}
        if numbers:
            body["abhaNumber"] = identity.gateway_number(numbers[0])
        request_id = abdm.callback(repo, GENERATE_TOKEN, body, answering=None, headers=abdm.hip_headers(),
                                   key=f"link:{reference}")
        saved = repo.access  # the visit's writer need not be allowed Tasks: this bookkeeping is the server's
        repo.access = as_system("ABDM HIP-initiated link of a new visit")
        try:
            repo.create("Task", {"resourceType": "Task", "status": "requested", "intent": "order",
                                 "identifier": [{"system": PENDING_SYSTEM, "value": request_id}],
                                 "code": {"text": "ABDM HIP-initiated care-context link"},
                                 "for": {"reference": subject}, "focus": {"reference": reference},
                                 "authoredOn": instant(datetime.now(UTC)),
                                 "input": [{"type": {"text": "abhaAddress"}, "valueString": addresses[0]}]})
        finally:
            repo.access = saved

    return hook


def on_generate_token(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    answered = str((body.get("response") or {}).get("requestId", ""))
    token = body.get("linkToken")

    def work(repo: Repository) -> None:
        ids = repo.find_ids("Task", [("identifier", f"{PENDING_SYSTEM}|{answered}")], limit=1)
        found = repo.current("Task", ids[0]) if ids else None
        task = dict(found.content or {}) if found is not None else None
        if task is None or task.get("status") != "requested":
            return
        task.pop("meta", None)
        encounter = task["focus"]["reference"]
        patient_id = task["for"]["reference"].split("/", 1)[1]
        if not token or body.get("error"):
            task["status"] = "failed"
            repo.update("Task", task["id"], task)
            return
        contexts = [cc for cc in identity.care_contexts(repo, patient_id) if cc["referenceNumber"] == encounter]
        patient = repo.read("Patient", patient_id)
        numbers = identity.identifier_values(patient.content or {}, identity.ABHA_NUMBER_SYSTEM)
        link: dict[str, Any] = {"abhaAddress": body.get("abhaAddress") or task["input"][0]["valueString"],
                                "patient": identity.group_by_hi_type(patient, contexts)}
        if numbers:
            link["abhaNumber"] = identity.gateway_number(numbers[0])
        sent = abdm.callback(repo, LINK_CARE_CONTEXT, link, answering=None,
                             headers={**abdm.hip_headers(), "X-LINK-TOKEN": str(token)}, key=f"carecontext:{encounter}")
        task["status"] = "in-progress"  # until the gateway confirms the link
        task["identifier"] = [*task["identifier"], {"system": LINKED_SYSTEM, "value": sent}]
        repo.update("Task", task["id"], task)
        abdm.audit(repo, "abdm-hip-link", "ABDM HIP-initiated care-context link", 200, [f"Patient/{patient_id}"])

    abdm.run(f"ABDM link token {answered}", work)


def on_carecontext(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    """The gateway linked (or refused) a care context we sent: once linked, the patient's app is told of the
    new record (context notify, through the outbox)."""
    answered = str((body.get("response") or {}).get("requestId", ""))

    def work(repo: Repository) -> None:
        ids = repo.find_ids("Task", [("identifier", f"{LINKED_SYSTEM}|{answered}")], limit=1)
        found = repo.current("Task", ids[0]) if ids else None
        task = dict(found.content or {}) if found is not None else None
        if task is None or task.get("status") != "in-progress":
            return  # unknown, or a repeated callback
        task.pop("meta", None)
        reference, patient_ref = task["focus"]["reference"], task["for"]["reference"]
        if body.get("error"):
            task["status"] = "failed"
            repo.update("Task", task["id"], task)
            abdm.audit(repo, "abdm-hip-link", "ABDM HIP-initiated link refused", 422, [patient_ref])
            return
        task["status"] = "completed"
        repo.update("Task", task["id"], task)
        rtype, _, rid = reference.partition("/")
        record = repo.current(rtype, rid)
        address = body.get("abhaAddress") or next(
            (i["valueString"] for i in task.get("input", []) if i["type"]["text"] == "abhaAddress"), "")
        abdm.callback(repo, CONTEXT_NOTIFY, {"notification": {
            "patient": {"id": address},
            "careContext": {"patientReference": patient_ref, "careContextReference": reference},
            "hiTypes": [identity.hi_type(record.content or {})] if record is not None else [],
            "date": timestamp(), "hip": {"id": abdm.settings.hip_id, "name": abdm.settings.hip_name}}},
            answering=None, headers=abdm.hip_headers(), key=f"context-notify:{reference}")
        abdm.audit(repo, "abdm-hip-link", "ABDM care context linked; the patient's app notified", 200, [patient_ref])

    abdm.run(f"ABDM care-context link confirmed {answered}", work)
