"""Health Information User: we ask for a patient's records held elsewhere (API v3, PROTOCOLS.md §B6).

consent request (init) -> on-init (the gateway's consent-request id) -> notify (GRANTED + artefact ids) ->
we acknowledge (on-notify, a list) and fetch each artefact -> on-fetch (the artefact: a Consent of ours,
``sourceReference`` = the request's Consent) -> health-information request with our own ephemeral key pair
-> on-request (the transaction id) -> the HIP pushes pages to our dataPushUrl -> decrypt, verify, store each
document Bundle (id derived from its identifier: a re-pull replaces, never duplicates) with a Provenance
naming the source HIP and the Consent -> we notify the gateway -> at ``dataEraseAt`` (or on revocation)
everything stored under the consent is deleted.

The dataPushUrl carries a per-request secret, and only a push that decrypts with our key for that
transaction is stored (AES-GCM authenticates every entry). Each request is a ``Task`` in the tenant's store
(focus: the Consent) holding the key pair sealed (keystore.py), the push secret's digest, the gateway's
transaction id once known, and the pages and care-context statuses received: a push is decrypted by
whichever API process it reaches, after a restart too. The key is dropped once every page has come. The
receiving side (push URL, decryption, storage, our transfer notification) is hiu_receive.py.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_server.errors import INVALID, FhirError
from fhir_server.storage.repository import Repository, Version, instant
from interfaces.abdm import consent as consents
from interfaces.abdm import identity
from interfaces.abdm.fidelius import KeyMaterial
from interfaces.abdm.gateway import timestamp
from interfaces.abdm.keystore import seal, secret_digest
from interfaces.abdm.records import parse_instant
from interfaces.abdm.service import Abdm

CONSENT_INIT = "/consent/v3/request/init"
CONSENT_ON_NOTIFY = "/consent/v3/request/hiu/on-notify"
CONSENT_FETCH = "/consent/v3/fetch"
HI_REQUEST = "/data-flow/v3/health-information/request"
HI_NOTIFY = "/data-flow/v3/health-information/notify"
INIT_REQUEST_SYSTEM = "urn:fhir-server:abdm-consent-init"
DOCUMENT = "urn:fhir-server:abdm-document"
PULL_SYSTEM = "urn:fhir-server:abdm-task/hiu-pull"
KEY_HOURS = 24  # how long our key pair for one request is offered (keyMaterial.dhPublicKey.expiry)


def _find(repo: Repository, rtype: str, params: list[tuple[str, str]]) -> Version | None:
    ids = repo.find_ids(rtype, params, limit=2)
    version = repo.current(rtype, ids[0]) if len(ids) == 1 else None
    return version if version is not None and not version.deleted else None


def _strip(content: dict[str, Any] | None) -> dict[str, Any]:
    """A copy to change (deep: the caller compares it with the stored content afterwards), without meta."""
    out = copy.deepcopy(content or {})
    out.pop("meta", None)
    return out


# --- consent request ---------------------------------------------------------------------------------------

def request_consent(abdm: Abdm, access: Any, patient_id: str, hi_types: list[str], start: str, end: str,
                    erase_at: str, purpose: str = "CAREMGT", requester: str = "") -> str:
    """Ask the gateway for a consent (our caller must be able to read the patient); returns our Consent id."""
    for value, name in ((start, "from"), (end, "to"), (erase_at, "dataEraseAt")):
        if parse_instant(value) is None:
            raise FhirError(400, INVALID, f"{name} is not a date-time", (name,))
    if not hi_types or any(not isinstance(t, str) for t in hi_types):
        raise FhirError(400, INVALID, "hiTypes must name at least one HI type", ("hiTypes",))
    patient = abdm.server.uow.run(lambda repo: repo.read("Patient", patient_id), write=False, access=access)
    addresses = identity.identifier_values(patient.content or {}, identity.ABHA_ADDRESS_SYSTEM)
    if not addresses:
        raise FhirError(422, INVALID, "The patient has no ABHA address", ("Patient.identifier",))
    consent_id = f"abdm-hiu-req-{uuid.uuid4()}"
    body = {"consent": {
        "purpose": {"text": purpose, "code": purpose, "refUri": "http://terminology.hl7.org/ValueSet/v3-PurposeOfUse"},
        "patient": {"id": addresses[0]}, "hiu": {"id": abdm.settings.hiu_id},
        "requester": {"name": requester or abdm.settings.hip_name,
                      "identifier": {"type": "REGNO", "value": abdm.settings.hiu_id,
                                     "system": "https://www.mciindia.org"}},
        "hiTypes": hi_types,
        "permission": {"accessMode": "VIEW", "dateRange": {"from": start, "to": end}, "dataEraseAt": erase_at,
                       "frequency": {"unit": "HOUR", "value": 1, "repeats": 0}}}}

    def work(repo: Repository) -> None:
        request_id = abdm.callback(repo, CONSENT_INIT, body, answering=None, headers=abdm.hiu_headers(),
                                   key=consent_id)
        resource = {"resourceType": "Consent", "id": consent_id, "status": "proposed",
                    "identifier": [{"system": INIT_REQUEST_SYSTEM, "value": request_id}],
                    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                          "code": "patient-privacy"}]},
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                    "patient": {"reference": f"Patient/{patient_id}"}, "dateTime": instant(datetime.now(UTC)),
                    "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                               "code": "OPTIN"}]},
                    "extension": [{"url": consents.EXT + "data-erase-at", "valueDateTime": erase_at}],
                    "provision": {"type": "permit", "dataPeriod": {"start": start, "end": end},
                                  "class": [{"system": consents.HI_TYPE_SYSTEM, "code": t} for t in hi_types],
                                  "purpose": [{"system": consents.PURPOSE_SYSTEM, "code": purpose}]}}
        repo.create("Consent", resource, resource_id=consent_id, method="PUT")
        abdm.audit(repo, "abdm-consent-request", "ABDM consent request", 202,
                   [f"Consent/{consent_id}", f"Patient/{patient_id}"], action="C", from_gateway=False)

    abdm.run(f"ABDM consent request for Patient/{patient_id}", work)
    return consent_id


def on_init(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    answered = str((body.get("response") or {}).get("requestId", ""))
    gateway_id = (body.get("consentRequest") or {}).get("id")

    def work(repo: Repository) -> None:
        found = _find(repo, "Consent", [("identifier", f"{INIT_REQUEST_SYSTEM}|{answered}")])
        if found is None:
            return
        content = _strip(found.content)
        if gateway_id and not any(i.get("system") == consents.REQUEST_SYSTEM for i in content["identifier"]):
            content["identifier"].append({"system": consents.REQUEST_SYSTEM, "value": str(gateway_id)})
        elif body.get("error"):
            content["status"] = "rejected"
        if content != _strip(found.content):
            repo.update("Consent", found.id, content)
        abdm.audit(repo, "abdm-consent-on-init", "ABDM consent request registered", 200, [f"Consent/{found.id}"])

    abdm.run(f"ABDM consent request on-init {answered}", work)


def notify(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    note = body.get("notification") or {}
    status = str(note.get("status", "")).upper()
    request = str(note.get("consentRequestId", ""))
    artefacts = [str(a["id"]) for a in note.get("consentArtefacts") or [] if isinstance(a, dict) and a.get("id")]

    def work(repo: Repository) -> None:
        found = _find(repo, "Consent", [("identifier", f"{consents.REQUEST_SYSTEM}|{request}")]) if request else None
        if found is not None and status in consents.STATUS:
            content = _strip(found.content)
            if content.get("status") != consents.STATUS[status]:
                content["status"] = consents.STATUS[status]
                repo.update("Consent", found.id, content)
        for artefact in artefacts:
            cid = consents.consent_id("hiu", artefact)
            if status == "GRANTED":
                abdm.callback(repo, CONSENT_FETCH, {"consentId": artefact}, answering=None,
                              headers=abdm.hiu_headers(), key=f"fetch:{artefact}")
            elif repo.current("Consent", cid) is not None:  # revoked / expired: stop, and erase what came
                _set_status(repo, cid, "inactive")
                abdm.enqueue(repo, "hiu-erase", f"{cid}:revoked", {"consent": cid})
        abdm.callback(repo, CONSENT_ON_NOTIFY, {"acknowledgement": [{"consentId": a, "status": "OK"}
                                                                    for a in artefacts]},
                      answering=request_id, headers=abdm.hiu_headers())
        abdm.audit(repo, "abdm-consent-notify", f"ABDM consent {status.lower()}", 200,
                   [f"Consent/{found.id}" if found else "", *(f"Consent/{consents.consent_id('hiu', a)}"
                                                               for a in artefacts if status != "GRANTED")])

    abdm.run(f"ABDM consent notification {request}", work)


def _set_status(repo: Repository, cid: str, status: str) -> None:
    version = repo.current("Consent", cid)
    if version is not None and version.content is not None and version.content.get("status") != status:
        repo.update("Consent", cid, {**_strip(version.content), "status": status})


def on_fetch(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    """The artefact: store it as a Consent, schedule its erasure, and ask for the data."""
    consent = body.get("consent") or {}
    detail = consent.get("consentDetail") or {}
    status = str(consent.get("status", "GRANTED"))
    artefact = str(detail.get("consentId", ""))
    if not artefact:
        return
    cid = consents.consent_id("hiu", artefact)
    if not abdm.consent_signed(consent):  # not the consent manager's artefact: nothing stored, nothing asked
        def refused(repo: Repository) -> None:
            known = repo.current("Consent", cid) is not None
            abdm.audit(repo, "abdm-consent-fetch", "ABDM consent artefact with a bad signature", 401,
                       [f"Consent/{cid}" if known else ""])

        abdm.run(f"ABDM consent artefact {artefact} refused", refused)
        return

    def work(repo: Repository) -> None:
        address = (detail.get("patient") or {}).get("id", "")
        patient = None
        with contextlib.suppress(ValueError):
            patient = _find(repo, "Patient", [("identifier",
                                               f"{identity.ABHA_ADDRESS_SYSTEM}|{identity.abha_address(address)}")])
        resource = consents.to_resource("hiu", status, detail, f"Patient/{patient.id}" if patient else None)
        request = _find(repo, "Consent", [("identifier", f"{consents.REQUEST_SYSTEM}|"
                                                         f"{detail.get('consentRequestId', '')}")]) \
            if detail.get("consentRequestId") else None
        if request is not None:
            resource["sourceReference"] = {"reference": f"Consent/{request.id}"}
        existing = repo.current("Consent", cid)
        if existing is None or _strip(existing.content) != resource:
            repo.update("Consent", cid, resource)
        erase_at = parse_instant(detail["permission"]["dataEraseAt"])
        if existing is None:
            abdm.enqueue(repo, "hiu-erase", cid, {"consent": cid}, not_before=erase_at)
            if resource["status"] == "active":
                request_data(abdm, repo, cid, resource)
        abdm.audit(repo, "abdm-consent-fetch", "ABDM consent artefact received", 200,
                   [f"Consent/{cid}", resource.get("patient", {}).get("reference", "")])

    abdm.run(f"ABDM consent artefact {artefact}", work)


def request_data(abdm: Abdm, repo: Repository, cid: str, consent: dict[str, Any]) -> str:
    """Enqueue a health-information request for the whole consented range, with a fresh key pair kept
    (sealed) in the pull's Task."""
    grant = consents.granted(consent)
    keys, secret = KeyMaterial.generate(), secrets.token_urlsafe(24)
    expiry = datetime.now(UTC) + timedelta(hours=KEY_HOURS)
    base = (abdm.settings.public_url or "").rstrip("/") + abdm.settings.base_path.rstrip("/")
    body = {"hiRequest": {"consent": {"id": grant.artefact},
                          "dateRange": {"from": timestamp(grant.data_period.start),
                                        "to": timestamp(grant.data_period.end)},
                          "dataPushUrl": f"{base}/api/v3/hiu/health-information/transfer/{secret}",
                          "keyMaterial": keys.to_json(expiry)}}
    request_id = abdm.callback(repo, HI_REQUEST, body, answering=None, headers=abdm.hiu_headers(),
                               key=f"hi-request:{cid}:{secret}")
    task_id = f"abdm-hiu-pull-{uuid.uuid5(uuid.NAMESPACE_URL, f'{PULL_SYSTEM}/{request_id}')}"
    task: dict[str, Any] = {
        "resourceType": "Task", "id": task_id, "status": "requested", "intent": "order",
        "identifier": [{"system": PULL_SYSTEM + "/request", "value": request_id},
                       {"system": PULL_SYSTEM + "/push-secret", "value": secret_digest(secret)}],
        "code": {"text": "ABDM health information pull"}, "focus": {"reference": f"Consent/{cid}"},
        "authoredOn": instant(datetime.now(UTC)), "restriction": {"period": {"end": instant(expiry)}},
        "input": [{"type": {"text": "keyMaterial"}, "valueString": seal(abdm.settings, keys, task_id)}]}
    if "patient" in consent:
        task["for"] = consent["patient"]
    repo.create("Task", task, resource_id=task_id, method="PUT")
    return request_id


def pull_again(abdm: Abdm, access: Any, cid: str) -> None:
    """A new health-information request under a stored artefact (the caller must be able to read it)."""
    consent = abdm.server.uow.run(lambda repo: repo.read("Consent", cid), write=False, access=access)
    content = consent.content or {}
    try:
        consents.check_request(content, None)
    except consents.ConsentRefused as exc:
        raise FhirError(409, INVALID, exc.message, ("Consent.status",)) from None
    abdm.run(f"ABDM health information pull {cid}", lambda repo: request_data(abdm, repo, cid, content))


def on_request(abdm: Abdm, request_id: str, body: dict[str, Any]) -> None:
    """The gateway's transaction id for our request: the push will name it."""
    answered = str((body.get("response") or {}).get("requestId", ""))
    txn = (body.get("hiRequest") or {}).get("transactionId")

    def work(repo: Repository) -> None:
        found = _find(repo, "Task", [("identifier", f"{PULL_SYSTEM}/request|{answered}")])
        if found is None or found.content is None:
            return
        task = _strip(found.content)
        if any(i.get("system") == PULL_SYSTEM + "/transaction" for i in task["identifier"]):
            return  # a repeated callback
        if not txn or body.get("error"):
            task["status"] = "failed"
        else:
            task["status"] = "in-progress"
            task["identifier"].append({"system": PULL_SYSTEM + "/transaction", "value": str(txn)})
        repo.update("Task", found.id, task)
        abdm.audit(repo, "abdm-hi-on-request", "ABDM health information request acknowledged",
                   200 if task["status"] == "in-progress" else 422, [task["focus"]["reference"]])

    abdm.run(f"ABDM health information on-request {answered}", work)


# --- outbox jobs -------------------------------------------------------------------------------------------

def deliver(abdm: Abdm, kind: str, payload: dict[str, Any]) -> None:
    if kind == "hiu-erase":
        erase(abdm, payload["consent"])


def erase(abdm: Abdm, cid: str) -> int:
    """Delete every document stored under the consent and its Provenance; the Consent becomes inactive."""

    def work(repo: Repository) -> int:
        version = repo.current("Consent", cid)
        if version is None or version.deleted or version.content is None:
            return 0
        grant = consents.granted(version.content)
        erase_at = parse_instant(str(consents.extension(version.content, "data-erase-at") or ""))
        if version.content.get("status") == "active" and erase_at is not None and datetime.now(UTC) < erase_at:
            return 0  # re-granted with a later end: a later row erases
        count = 0
        for pid in repo.find_ids("Provenance", [("entity", f"Consent/{cid}")], limit=10000):
            prov = repo.current("Provenance", pid)
            for target in (prov.content or {}).get("target", []) if prov else []:
                rtype, _, rid = target.get("reference", "").partition("/")
                if rtype == "Bundle" and repo.current(rtype, rid) is not None and \
                        repo.delete(rtype, rid) is not None:
                    count += 1
            repo.delete("Provenance", pid)
        _set_status(repo, cid, "inactive")
        abdm.audit(repo, "abdm-hi-erase", f"ABDM data erased ({count} documents)", 200,
                   [grant.reference, grant.consent.get("patient", {}).get("reference", "")], action="D",
                   from_gateway=False)
        return count

    return abdm.run(f"ABDM erasure at the end of consent {cid}", work)
