"""HIP: the data transfer of one health-information request (an outbox job, retried as a whole).

1. In one read-only unit of work acting as the system for the consent: re-check the consent (a revocation
   or expiry since the request stops everything here), build the NRCeS documents of every consented care
   context and HI type within the requested dates, validate them against the installed IG.
2. Encrypt each with Fidelius (a fresh key pair and nonce per attempt), push the pages to the HIU's
   ``dataPushUrl`` directly (not through the gateway), every request checked by the outbound guard.
3. In one unit of work: the Task done, the gateway's transfer notification enqueued (per care context:
   DELIVERED, or ERRORED with why), an AuditEvent naming the Consent.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx
import orjson

from fhir_server.outbound import request_guard
from fhir_server.rest.request import FhirRequest
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from interfaces.abdm import consent as consents
from interfaces.abdm.fidelius import KeyMaterial
from interfaces.abdm.gateway import timestamp
from interfaces.abdm.records import DOCUMENT_BUNDLE, DateRange, DocumentBuilder, parse_instant
from interfaces.abdm.service import Abdm

log = logging.getLogger(__name__)

HI_NOTIFY = "/data-flow/v3/health-information/notify"
MEDIA = "application/fhir+json"


def _belongs(repo: Repository, reference: str, patient: str) -> bool:
    rtype, _, rid = reference.partition("/")
    if rtype not in ("Encounter", "DiagnosticReport", "DocumentReference") or not rid:
        return False
    version = repo.current(rtype, rid)
    content = version.content if version is not None and not version.deleted else None
    return bool(content) and (content or {}).get("subject", {}).get("reference") == patient


def build_documents(abdm: Abdm, consent_id: str, dates: DateRange) -> tuple[consents.Granted | None,
                                                                            dict[str, list[dict[str, Any]]], str]:
    """(the grant or None, care context -> documents, why not) for a consent, as of now."""
    reason = f"ABDM health information request {consent_id}"
    identifier_system = (abdm.settings.public_url or "https://facility.ndhm.gov.in").rstrip("/") + \
        f"/abdm/{abdm.settings.hip_id}/documents"

    def work(repo: Repository) -> tuple[consents.Granted | None, dict[str, list[dict[str, Any]]], str]:
        version = repo.current("Consent", consent_id)
        content = version.content if version is not None and not version.deleted else None
        try:
            grant = consents.check_request(content, dates)
        except consents.ConsentRefused as exc:
            return None, {}, exc.message
        patient = grant.consent.get("patient", {}).get("reference", "")
        builder = DocumentBuilder(repo, abdm.settings.hip_id or "", abdm.settings.hip_name, identifier_system)
        out: dict[str, list[dict[str, Any]]] = {}
        for cc in grant.care_contexts:
            # Only this patient's records, whatever the artefact names; only consented types and dates.
            out[cc] = [doc for hi_type in grant.hi_types for doc in builder.build(cc, hi_type, dates)] \
                if _belongs(repo, cc, patient) else []
        return grant, out, ""

    return abdm.run(reason, work, write=False)


def ig_installed(abdm: Abdm) -> bool:
    response = abdm.server.handle(FhirRequest("GET", "StructureDefinition", query=[("url", DOCUMENT_BUNDLE)],
                                              access=as_system("ABDM: is the NRCeS IG installed")))
    return response.status == 200 and bool((response.resource or {}).get("entry"))


def validate(abdm: Abdm, document: dict[str, Any]) -> list[str]:
    """Error messages of $validate against DocumentBundle (and the profiles the document declares)."""
    response = abdm.server.handle(FhirRequest(
        "POST", "Bundle/$validate", query=[("profile", DOCUMENT_BUNDLE)], resource=document,
        headers={"content-type": "application/fhir+json"},
        access=as_system("ABDM: validate an outgoing NRCeS document")))
    issues = (response.resource or {}).get("issue", [])
    return [str(i.get("diagnostics", "")) + " @ " + ",".join(i.get("expression", []))
            for i in issues if i.get("severity") in ("error", "fatal")]


def transfer(abdm: Abdm, job: dict[str, Any]) -> None:
    start, end = parse_instant(job["from"]), parse_instant(job["to"])
    assert start is not None and end is not None
    grant, documents, why = build_documents(abdm, job["consent"], DateRange(start, end))
    statuses: list[dict[str, str]] = []
    entries: list[dict[str, Any]] = []
    keys = KeyMaterial.generate()
    check_ig = ig_installed(abdm) if grant is not None else False
    for cc, docs in documents.items():
        sendable = []
        for doc in docs:
            errors = validate(abdm, doc) if check_ig else []
            if errors:  # never send a document the IG rejects; say so per care context
                log.warning("abdm: a %s document failed NRCeS validation (%d errors)", cc.split("/")[0], len(errors))
                continue
            sendable.append(doc)
        for doc in sendable:
            text = orjson.dumps(doc)
            entries.append({"content": keys.encrypt(text, job["keyMaterial"]), "media": MEDIA,
                            "checksum": hashlib.md5(text).hexdigest(),  # the spec: MD5 of the plaintext
                            "careContextReference": cc})
        statuses.append({"careContextReference": cc, "hiStatus": "DELIVERED" if sendable else "ERRORED",
                         "description": "Delivered" if sendable else
                         ("Failed NRCeS validation" if docs else "No records of the consented types and dates")})
    if grant is not None and entries:
        _push(abdm, job, keys, entries)
    session = "TRANSFERRED" if grant is not None and entries else "FAILED"
    hip_id = abdm.settings.hip_id or ""

    def record(repo: Repository) -> None:
        version = repo.current("Task", job["task"])
        if version is not None and version.content is not None:
            task = dict(version.content)
            task.pop("meta", None)
            task["status"] = "completed" if session == "TRANSFERRED" else "failed"
            task["output"] = [{"type": {"text": s["careContextReference"]}, "valueString": s["hiStatus"]}
                              for s in statuses] or [{"type": {"text": "reason"}, "valueString": why or "nothing"}]
            repo.update("Task", job["task"], task)
        artefact = grant.artefact if grant is not None else None
        if artefact is None:
            consent = repo.current("Consent", job["consent"])
            artefact = (consent.content or {}).get("identifier", [{}])[0].get("value") if consent else None
        abdm.callback(repo, HI_NOTIFY, {"notification": {
            "consentId": artefact or "", "transactionId": job["transactionId"], "doneAt": timestamp(),
            "notifier": {"type": "HIP", "id": hip_id},
            "statusNotification": {"sessionStatus": session, "hipId": hip_id, "statusResponses": statuses}}},
            answering=None, headers=abdm.hip_headers())
        patient = grant.consent.get("patient", {}).get("reference", "") if grant else ""
        abdm.audit(repo, "abdm-hi-transfer", f"ABDM health information transfer ({len(entries)} documents)",
                   200 if session == "TRANSFERRED" else 403, [f"Consent/{job['consent']}", patient],
                   action="R", from_gateway=False)

    abdm.run(f"ABDM health information transfer {job['transactionId']}", record)


def _push(abdm: Abdm, job: dict[str, Any], keys: KeyMaterial, entries: list[dict[str, Any]]) -> None:
    size = max(1, abdm.settings.entries_per_page)
    pages = [entries[i:i + size] for i in range(0, len(entries), size)]
    key_material = keys.to_json()
    with httpx.Client(timeout=abdm.settings.http_timeout_seconds,
                      event_hooks={"request": [request_guard(abdm.server.settings, "hiRequest.dataPushUrl")]}) as http:
        for number, page in enumerate(pages, start=1):  # 1-based (care_abdm); receivers accept 0 or 1
            body = {"pageNumber": number, "pageCount": len(pages), "transactionId": job["transactionId"],
                    "entries": page, "keyMaterial": key_material}
            # No gateway token goes to the HIU: it is our credential at the gateway, and the HIU is not it.
            resp = http.post(job["dataPushUrl"], content=orjson.dumps(body),
                             headers={"Content-Type": "application/json"})
            if resp.status_code >= 300:
                raise RuntimeError(f"the HIU answered {resp.status_code} to page {number}")
