"""HIP-initiated linking: each new visit of a patient with an ABHA address is linked to their ABHA by us,
without the patient asking (API v3; PROTOCOLS.md §B5, care_abdm ``service/v3/gateway.py``).

Encounter created (BEFORE_COMMIT, in the visit's own transaction): a ``Task`` records the pending link and
``POST /v3/token/generate-token`` {abhaNumber, abhaAddress, name, gender, yearOfBirth} is enqueued ->
the gateway answers ``/api/v3/hip/token/on-generate-token`` {abhaAddress, linkToken, response.requestId} ->
we enqueue ``POST /hip/v3/link/carecontext`` (header ``X-LINK-TOKEN``) {abhaNumber, abhaAddress,
patient[{referenceNumber, display, careContexts[], hiType, count}]} -> ``/api/v3/link/on_carecontext``
acknowledges. The link token travels in the outbox row only until it is delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository, instant
from interfaces.abdm import identity
from interfaces.abdm.service import Abdm

GENERATE_TOKEN = "/v3/token/generate-token"
LINK_CARE_CONTEXT = "/hip/v3/link/carecontext"
PENDING_SYSTEM = "urn:fhir-server:abdm-task/hip-link"


def visit_hook(abdm: Abdm) -> Any:
    def hook(event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Encounter" or event.interaction != "create" or repo is None \
                or event.resource is None or event.version is None:
            return
        subject = str(event.resource.get("subject", {}).get("reference", ""))
        if not subject.startswith("Patient/"):
            return
        patient = repo.current("Patient", subject.split("/", 1)[1])
        content = patient.content if patient is not None and not patient.deleted else None
        addresses = identity.identifier_values(content or {}, identity.ABHA_ADDRESS_SYSTEM)
        if not content or not addresses:
            return
        numbers = identity.identifier_values(content, identity.ABHA_NUMBER_SYSTEM)
        body: dict[str, Any] = {"abhaAddress": addresses[0], "name": identity.patient_name(content),
                                "gender": identity.GENDER.get(content.get("gender", ""), "U"),
                                "yearOfBirth": int(str(content.get("birthDate", "0"))[:4] or 0)}
        if numbers:
            body["abhaNumber"] = identity.gateway_number(numbers[0])
        encounter = f"Encounter/{event.version.id}"
        request_id = abdm.callback(repo, GENERATE_TOKEN, body, answering=None, headers=abdm.hip_headers(),
                                   key=f"link:{encounter}")
        saved = repo.access  # the visit's writer need not be allowed Tasks: this bookkeeping is the server's
        repo.access = as_system("ABDM HIP-initiated link of a new visit")
        try:
            repo.create("Task", {"resourceType": "Task", "status": "requested", "intent": "order",
                                 "identifier": [{"system": PENDING_SYSTEM, "value": request_id}],
                                 "code": {"text": "ABDM HIP-initiated care-context link"},
                                 "for": {"reference": subject}, "focus": {"reference": encounter},
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
        abdm.callback(repo, LINK_CARE_CONTEXT, link, answering=None,
                      headers={**abdm.hip_headers(), "X-LINK-TOKEN": str(token)}, key=f"carecontext:{encounter}")
        task["status"] = "completed"
        repo.update("Task", task["id"], task)
        abdm.audit(repo, "abdm-hip-link", "ABDM HIP-initiated care-context link", 200, [f"Patient/{patient_id}"])

    abdm.run(f"ABDM link token {answered}", work)
