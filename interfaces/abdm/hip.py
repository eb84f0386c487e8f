"""Health Information Provider: what the gateway asks of us, answered through its callbacks (API v3).

Each function handles one incoming call after the router has answered 202: in one unit of work acting as
the system for that exchange (``as_system("ABDM ... <id>")``), it reads and writes through the repository,
enqueues the gateway callback (outbox) and records an AuditEvent. Repeated calls are answered again
without repeating their effect (the link OTP is not re-sent, a transfer is not re-pushed).

Shapes: PROTOCOLS.md §B5 (NHA ABDM-wrapper v3, NHA mock HIP, care_abdm).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.outbound import check_url
from fhir_server.storage.repository import Repository, Version, instant
from fhir_server.workflows import enabled_areas
from interfaces.abdm import consent as consents
from interfaces.abdm import identity
from interfaces.abdm.fidelius import FideliusError, peer_key
from interfaces.abdm.gateway import timestamp
from interfaces.abdm.service import Abdm

ON_DISCOVER = "/user-initiated-linking/v3/patient/care-context/on-discover"
ON_LINK_INIT = "/user-initiated-linking/v3/link/care-context/on-init"
ON_LINK_CONFIRM = "/user-initiated-linking/v3/link/care-context/on-confirm"
ON_CONSENT_NOTIFY = "/consent/v3/request/hip/on-notify"
ON_HI_REQUEST = "/data-flow/v3/health-information/hip/on-request"

TASK_SYSTEM = "urn:fhir-server:abdm-task"
MAX_OTP_ATTEMPTS = 3


class BadRequest(ValueError):
    """A body the gateway should not have sent: answered 400 at once (nothing is written)."""


def _need(body: Any, *path: str) -> Any:
    node = body
    for name in path:
        if not isinstance(node, dict) or node.get(name) in (None, ""):
            raise BadRequest(f"{'.'.join(path)} is required")
        node = node[name]
    return node


def _task_id(kind: str, key: str) -> str:
    return f"abdm-{kind}-{uuid.uuid5(uuid.NAMESPACE_URL, f'{TASK_SYSTEM}/{kind}/{key}')}"


def _input(task: dict[str, Any], name: str) -> Any:
    for item in task.get("input") or []:
        if item.get("type", {}).get("text") == name:
            return next((v for k, v in item.items() if k.startswith("value")), None)
    return None


def _current(repo: Repository, rtype: str, rid: str) -> Version | None:
    version = repo.current(rtype, rid)
    return version if version is not None and not version.deleted else None


# --- discovery ---------------------------------------------------------------------------------------------

def discover(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    txn = str(_need(body, "transactionId"))
    query = _need(body, "patient")

    # The front desk's master patient index, when that workflow is on (issue 17), else exact demographics.
    mpi = "frontdesk" in enabled_areas(abdm.server.settings.workflows)
    mr_system = abdm.settings.mr_system or (abdm.server.settings.mrn_system if mpi else None)

    def work(repo: Repository) -> None:
        found, matched_by = identity.discover(repo, query, mr_system, mpi=mpi)
        if found is None:
            answer: dict[str, Any] = {"transactionId": txn,
                                      "error": {"code": "ABDM-1010", "message": "Patient not found"}}
        else:
            contexts = identity.care_contexts(repo, found.id)
            answer = {"transactionId": txn, "patient": identity.group_by_hi_type(found, contexts),
                      "matchedBy": matched_by}
        abdm.callback(repo, ON_DISCOVER, answer, answering=request_id, headers=abdm.hip_headers())
        abdm.audit(repo, "abdm-discover", "ABDM patient discovery", 200 if found else 404,
                   [f"Patient/{found.id}"] if found else [], action="R")

    abdm.run(f"ABDM patient discovery {txn}", work)


# --- linking -----------------------------------------------------------------------------------------------

def _otp_hash(salt: str, otp: str) -> str:
    return hashlib.sha256(f"{salt}:{otp}".encode()).hexdigest()


def link_init(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    txn = str(_need(body, "transactionId"))
    address = str(_need(body, "abhaAddress"))
    groups = _need(body, "patient")
    if isinstance(groups, dict):  # v0.5 shape: one patient object
        groups = [groups]
    if not isinstance(groups, list):
        raise BadRequest("patient must be a list")
    try:
        address = identity.abha_address(address)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    task_id = _task_id("link", txn)

    def work(repo: Repository) -> None:
        existing = _current(repo, "Task", task_id)
        if existing is not None and existing.content is not None:  # a repeated init: same answer, no new OTP
            abdm.callback(repo, ON_LINK_INIT, _on_init(txn, existing.content), answering=request_id,
                          headers=abdm.hip_headers())
            return
        patient_refs = {str(g.get("referenceNumber", "")) for g in groups if isinstance(g, dict)}
        wanted = [str(cc.get("referenceNumber", "")) for g in groups if isinstance(g, dict)
                  for cc in g.get("careContexts") or [] if isinstance(cc, dict)]
        patient = None
        if len(patient_refs) == 1 and next(iter(patient_refs)).startswith("Patient/"):
            patient = _current(repo, "Patient", next(iter(patient_refs)).split("/", 1)[1])
        error = None
        if patient is None or not patient.content:
            error = ("ABDM-1010", "Patient not found")
        else:
            own = {cc["referenceNumber"] for cc in identity.care_contexts(repo, patient.id)}
            phones = [t["value"] for t in patient.content.get("telecom", []) if t.get("system") in ("phone", "sms")
                      and t.get("value")]
            if not wanted or any(cc not in own for cc in wanted):
                error = ("ABDM-1021", "A care context is not this patient's")
            elif not phones:
                error = ("ABDM-1022", "The patient has no phone number for the OTP")
        if error is not None or patient is None:
            code, message = error or ("ABDM-1010", "Patient not found")
            abdm.callback(repo, ON_LINK_INIT, {"transactionId": txn, "error": {"code": code, "message": message}},
                          answering=request_id, headers=abdm.hip_headers())
            abdm.audit(repo, "abdm-link-init", "ABDM care-context link request", 422,
                       [f"Patient/{patient.id}"] if patient else [])
            return
        otp = f"{secrets.randbelow(10**6):06d}"
        salt = secrets.token_hex(8)
        expires = datetime.now(UTC) + timedelta(seconds=abdm.settings.otp_seconds)
        task = {"resourceType": "Task", "id": task_id, "status": "requested", "intent": "order",
                "identifier": [{"system": TASK_SYSTEM + "/link", "value": task_id}],
                "code": {"text": "ABDM care-context link"}, "for": {"reference": f"Patient/{patient.id}"},
                "authoredOn": instant(datetime.now(UTC)),
                "restriction": {"period": {"end": instant(expires)}},
                "input": [{"type": {"text": "abhaAddress"}, "valueString": address},
                          {"type": {"text": "otp"}, "valueString": f"{salt}:{_otp_hash(salt, otp)}"},
                          {"type": {"text": "attempts"}, "valueInteger": 0},
                          *({"type": {"text": "careContext"}, "valueReference": {"reference": cc}} for cc in wanted)]}
        repo.create("Task", task, resource_id=task_id, method="PUT")
        assert patient.content is not None
        phone = next(t["value"] for t in patient.content.get("telecom", []) if t.get("system") in ("phone", "sms"))
        abdm.enqueue(repo, "otp", task_id, {"to": phone, "message":
                     f"{otp} is your OTP to link your records at {abdm.settings.hip_name} to your ABHA {address}. "
                     f"Valid {abdm.settings.otp_seconds // 60} minutes."})
        abdm.callback(repo, ON_LINK_INIT, _on_init(txn, task), answering=request_id, headers=abdm.hip_headers())
        abdm.audit(repo, "abdm-link-init", "ABDM care-context link request", 200, [f"Patient/{patient.id}"])

    abdm.run(f"ABDM link request {txn}", work)


def _on_init(txn: str, task: dict[str, Any]) -> dict[str, Any]:
    expiry = (task.get("restriction") or {}).get("period", {}).get("end", "")
    return {"transactionId": txn,
            "link": {"referenceNumber": task["id"], "authenticationType": "DIRECT",
                     "meta": {"communicationMedium": "MOBILE", "communicationHint": "OTP",
                              "communicationExpiry": timestamp(datetime.fromisoformat(expiry)) if expiry else ""}}}


def link_confirm(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    link_ref = str(_need(body, "confirmation", "linkRefNumber"))
    token = str(_need(body, "confirmation", "token"))

    def fail(repo: Repository, code: str, message: str, patient: str | None) -> None:
        abdm.callback(repo, ON_LINK_CONFIRM, {"error": {"code": code, "message": message}}, answering=request_id,
                      headers=abdm.hip_headers())
        abdm.audit(repo, "abdm-link-confirm", "ABDM care-context link confirmation", 401, [patient or ""])

    def work(repo: Repository) -> None:
        found = _current(repo, "Task", link_ref) if link_ref.startswith("abdm-link-") else None
        task = found.content if found is not None else None
        if task is None:
            return fail(repo, "ABDM-1023", "Unknown link reference", None)
        patient_ref = task["for"]["reference"]
        if task["status"] == "completed":  # a repeated confirm: the same answer
            abdm.callback(repo, ON_LINK_CONFIRM, _on_confirm(repo, task), answering=request_id,
                          headers=abdm.hip_headers())
            return None
        expires = datetime.fromisoformat(task["restriction"]["period"]["end"])
        if task["status"] != "requested" or datetime.now(UTC) > expires:
            return fail(repo, "ABDM-1024", "The OTP has expired", patient_ref)
        salt, expected = str(_input(task, "otp")).split(":", 1)
        if not hmac.compare_digest(_otp_hash(salt, token), expected):
            attempts = int(_input(task, "attempts") or 0) + 1
            for item in task["input"]:
                if item["type"]["text"] == "attempts":
                    item["valueInteger"] = attempts
            if attempts >= MAX_OTP_ATTEMPTS:
                task["status"] = "failed"
            repo.update("Task", task["id"], task)
            return fail(repo, "ABDM-1017", "Invalid OTP", patient_ref)
        task["status"] = "completed"
        task["input"] = [i for i in task["input"] if i["type"]["text"] != "otp"]  # spent: no hash kept
        repo.update("Task", task["id"], task)
        _add_abha_address(repo, patient_ref, str(_input(task, "abhaAddress")))
        abdm.callback(repo, ON_LINK_CONFIRM, _on_confirm(repo, task), answering=request_id,
                      headers=abdm.hip_headers())
        abdm.audit(repo, "abdm-link-confirm", "ABDM care-context link confirmation", 200, [patient_ref])
        return None

    abdm.run(f"ABDM link confirmation {link_ref}", work)


def _add_abha_address(repo: Repository, patient_ref: str, address: str) -> None:
    """The linked ABHA address becomes one of the Patient's identifiers (how consents and pulls find it)."""
    patient = repo.read("Patient", patient_ref.split("/", 1)[1])
    content = dict(patient.content or {})
    if address in identity.identifier_values(content, identity.ABHA_ADDRESS_SYSTEM):
        return
    content["identifier"] = [*content.get("identifier", []),
                             {"system": identity.ABHA_ADDRESS_SYSTEM, "value": address,
                              "type": {"coding": [{"system": identity.IDENTIFIER_TYPE_SYSTEM, "code": "ABHA"}],
                                       "text": "ABHA address"}}]
    repo.update("Patient", patient.id, content)


def _on_confirm(repo: Repository, task: dict[str, Any]) -> dict[str, Any]:
    patient_id = task["for"]["reference"].split("/", 1)[1]
    linked = {i["valueReference"]["reference"] for i in task["input"] if i["type"]["text"] == "careContext"}
    contexts = [cc for cc in identity.care_contexts(repo, patient_id) if cc["referenceNumber"] in linked]
    patient = repo.read("Patient", patient_id)
    return {"patient": identity.group_by_hi_type(patient, contexts)}


# --- consent -----------------------------------------------------------------------------------------------

def consent_notify(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    notification = _need(body, "notification")
    status = str(_need(notification, "status")).upper()
    artefact = str(notification.get("consentId") or _need(notification, "consentDetail", "consentId"))
    detail = notification.get("consentDetail")
    cid = consents.consent_id("hip", artefact)
    # A grant must carry the consent manager's signature over its detail (a revocation or expiry, which only
    # takes away, names the artefact alone and is honoured as it is).
    forged = isinstance(detail, dict) and not abdm.consent_signed(notification)

    def work(repo: Repository) -> None:
        current = _current(repo, "Consent", cid)
        if forged:
            abdm.callback(repo, ON_CONSENT_NOTIFY, {"acknowledgement": {"status": "UNKNOWN", "consentId": artefact},
                                                    "error": {"code": "ABDM-1030",
                                                              "message": "The consent signature is not valid"}},
                          answering=request_id, headers=abdm.hip_headers())
            abdm.audit(repo, "abdm-consent-notify", "ABDM consent notification with a bad signature", 401,
                       [f"Consent/{cid}" if current is not None else ""], action="U")
            return
        if isinstance(detail, dict):
            refs = {cc.get("patientReference") for cc in detail.get("careContexts") or [] if isinstance(cc, dict)}
            patient = next((r for r in refs if isinstance(r, str) and r.startswith("Patient/")
                            and _current(repo, "Patient", r.split("/", 1)[1]) is not None), None)
            try:
                resource = consents.to_resource("hip", status, detail, patient)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        elif current is not None and current.content is not None:  # REVOKED / EXPIRED name only the artefact
            resource = {**current.content, "status": consents.STATUS.get(status, current.content["status"])}
            resource.pop("meta", None)
        else:
            abdm.callback(repo, ON_CONSENT_NOTIFY, {"acknowledgement": {"status": "UNKNOWN", "consentId": artefact}},
                          answering=request_id, headers=abdm.hip_headers())
            return
        previous = dict(current.content or {}) if current is not None else None
        if previous is not None:
            previous.pop("meta", None)
        if previous != resource:
            repo.update("Consent", cid, resource)
        abdm.callback(repo, ON_CONSENT_NOTIFY, {"acknowledgement": {"status": "OK", "consentId": artefact}},
                      answering=request_id, headers=abdm.hip_headers())
        abdm.audit(repo, "abdm-consent-notify", f"ABDM consent {status.lower()}", 200,
                   [f"Consent/{cid}", resource.get("patient", {}).get("reference", "")], action="U")

    abdm.run(f"ABDM consent notification {artefact}", work)


# --- health information request ----------------------------------------------------------------------------

def hi_request(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    txn = str(_need(body, "transactionId"))
    request = _need(body, "hiRequest")
    artefact = str(_need(request, "consent", "id"))
    push_url = str(_need(request, "dataPushUrl"))
    key_material = request.get("keyMaterial")
    cid = consents.consent_id("hip", artefact)
    task_id = _task_id("hi-request", txn)

    def work(repo: Repository) -> None:
        if _current(repo, "Task", task_id) is not None:  # a repeated request: acknowledged again, not re-sent
            abdm.callback(repo, ON_HI_REQUEST, {"hiRequest": {"transactionId": txn, "sessionStatus": "ACKNOWLEDGED"}},
                          answering=request_id, headers=abdm.hip_headers())
            return
        current = _current(repo, "Consent", cid)
        consent = current.content if current is not None else None
        try:
            dates = consents.date_range(request.get("dateRange"), "hiRequest.dateRange")
            grant = consents.check_request(consent, dates)
            consents.check_frequency(grant.consent, _served(repo, grant.reference))
            peer_key(key_material)
            check_url(push_url, abdm.server.settings, "hiRequest.dataPushUrl")
        except (consents.ConsentRefused, FideliusError, ValueError, FhirError) as exc:
            code, message = _refusal(exc)
            abdm.callback(repo, ON_HI_REQUEST, {"hiRequest": {"transactionId": txn, "sessionStatus": "FAILED"},
                                                "error": {"code": code, "message": message}},
                          answering=request_id, headers=abdm.hip_headers())
            abdm.audit(repo, "abdm-hi-request", "ABDM health information request refused", 403,
                       [f"Consent/{cid}" if consent else "", (consent or {}).get("patient", {}).get("reference", "")])
            return
        task = {"resourceType": "Task", "id": task_id, "status": "accepted", "intent": "order",
                "identifier": [{"system": TASK_SYSTEM + "/hi-request", "value": txn}],
                "code": {"text": "ABDM health information request"}, "focus": {"reference": grant.reference},
                "authoredOn": instant(datetime.now(UTC)),
                "input": [{"type": {"text": "dataPushUrl"}, "valueUrl": push_url},
                          {"type": {"text": "dateRange"}, "valuePeriod": {"start": instant(dates.start),
                                                                           "end": instant(dates.end)}}]}
        if "patient" in grant.consent:
            task["for"] = grant.consent["patient"]
        repo.create("Task", task, resource_id=task_id, method="PUT")
        # the acknowledgement first: the outbox delivers in order, and the transfer takes a while
        abdm.callback(repo, ON_HI_REQUEST, {"hiRequest": {"transactionId": txn, "sessionStatus": "ACKNOWLEDGED"}},
                      answering=request_id, headers=abdm.hip_headers())
        abdm.enqueue(repo, "transfer", txn, {"transactionId": txn, "consent": cid, "task": task_id,
                                             "from": instant(dates.start), "to": instant(dates.end),
                                             "dataPushUrl": push_url, "keyMaterial": key_material})
        abdm.audit(repo, "abdm-hi-request", "ABDM health information request", 200,
                   [grant.reference, grant.consent.get("patient", {}).get("reference", "")])

    abdm.run(f"ABDM health information request {artefact}", work)


def _served(repo: Repository, consent: str) -> list[str]:
    """When each earlier request under the consent was accepted (its Task's authoredOn)."""
    ids = [i for i in repo.find_ids("Task", [("focus", consent)], limit=1000) if i.startswith("abdm-hi-request-")]
    return [str((v.content or {}).get("authoredOn", "")) for v in repo.read_many([("Task", i) for i in ids])]


def _refusal(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, consents.ConsentRefused):
        return exc.code, exc.message
    if isinstance(exc, FideliusError):
        return "ABDM-1019", f"Invalid key material: {exc}"
    if isinstance(exc, FhirError):
        return "ABDM-1020", "The dataPushUrl is not allowed"
    return "ABDM-1000", str(exc)
