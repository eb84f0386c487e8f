"""Our HIU receiving a HIP's push (PROTOCOLS.md §B5 data push, §B6): the push URL's secret, the pull's sealed
key, decryption, and each document stored once under the consent with its Provenance; once every page has
come, our transfer notification to the gateway (hiu.py makes the request these pages answer)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.errors import FORBIDDEN, INVALID, FhirError
from fhir_server.storage.repository import Repository, Version, instant
from interfaces.abdm import consent as consents
from interfaces.abdm.fidelius import FideliusError
from interfaces.abdm.gateway import timestamp
from interfaces.abdm.hiu import DOCUMENT, HI_NOTIFY, PULL_SYSTEM, _find, _strip
from interfaces.abdm.keystore import KeyStoreError, secret_digest, unseal
from interfaces.abdm.service import Abdm


def _input(task: dict[str, Any], name: str) -> str | None:
    return next((str(i.get("valueString")) for i in task.get("input") or [] if i["type"]["text"] == name), None)


def authorize_push(abdm: Abdm, secret: str) -> Version:
    """The pull a push URL's secret belongs to (only its SHA-256 is kept), before the body is even read:
    403 for any other."""
    digest = secret_digest(secret)
    found = abdm.run("ABDM health information push", lambda repo: _find(
        repo, "Task", [("identifier", f"{PULL_SYSTEM}/push-secret|{digest}")]), write=False)
    if found is None or found.content is None:
        raise FhirError(403, FORBIDDEN, "Unknown push URL", ("dataPushUrl",))
    return found


def receive(abdm: Abdm, found: Version, body: dict[str, Any]) -> None:
    """A pushed page for the pull ``found``: every entry must decrypt (else 400, nothing stored); documents
    stored idempotently."""
    task = found.content or {}
    txn = str(body.get("transactionId", ""))
    known = [i["value"] for i in task.get("identifier", []) if i.get("system") == PULL_SYSTEM + "/transaction"]
    if txn not in known:
        raise FhirError(403, FORBIDDEN, "Unknown transaction for this push URL", ("transactionId",))
    sealed = _input(task, "keyMaterial")
    if sealed is None:
        raise FhirError(409, INVALID, "Every page of this transaction has come already", ("transactionId",))
    try:
        keys = unseal(abdm.settings, sealed, found.id)
    except KeyStoreError as exc:
        raise FhirError(409, INVALID, str(exc), ("transactionId",)) from None
    documents: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(body.get("entries") or []):
        try:
            plain = keys.decrypt(str(entry.get("content", "")), body.get("keyMaterial"))
            document = orjson.loads(plain)
        except (FideliusError, orjson.JSONDecodeError) as exc:
            raise FhirError(400, INVALID, f"entries[{i}] cannot be used: {exc}", (f"entries[{i}].content",)) from None
        if not isinstance(document, dict) or document.get("resourceType") != "Bundle" or \
                document.get("type") != "document" or not (document.get("identifier") or {}).get("value"):
            raise FhirError(400, INVALID, f"entries[{i}] is not a document Bundle with an identifier",
                            (f"entries[{i}].content",))
        documents.append((str(entry.get("careContextReference", "")), document))
    cid = task["focus"]["reference"].split("/", 1)[1]

    def work(repo: Repository) -> list[dict[str, str]]:
        version = repo.current("Consent", cid)
        try:
            grant = consents.check_request(version.content if version else None, None)
        except consents.ConsentRefused as exc:
            raise FhirError(403, FORBIDDEN, exc.message, ("Consent",)) from None
        hip = (next((a["reference"] for a in grant.consent["provision"].get("actor", [])
                     if a["reference"]["identifier"]["system"] == consents.HIP_SYSTEM), None)
               or {"display": "unknown HIP"})
        statuses = []
        for cc, document in documents:
            if grant.care_contexts and cc not in grant.care_contexts:
                statuses.append({"careContextReference": cc, "hiStatus": "ERRORED",
                                 "description": "Not a care context of the consent"})
                continue
            _store(repo, cid, grant, hip, document)
            statuses.append({"careContextReference": cc, "hiStatus": "OK", "description": "Stored"})
        abdm.audit(repo, "abdm-hi-receive", f"ABDM health information received ({len(documents)} documents)", 200,
                   [f"Consent/{cid}", grant.consent.get("patient", {}).get("reference", "")], action="C",
                   from_gateway=False)
        _record_page(abdm, repo, found.id, txn, body, statuses, grant, hip)
        return statuses

    abdm.run(f"ABDM health information receipt {txn}", work)


def _record_page(abdm: Abdm, repo: Repository, task_id: str, txn: str, body: dict[str, Any],
                 statuses: list[dict[str, str]], grant: consents.Granted, hip: dict[str, Any]) -> None:
    """The page and its care contexts' statuses on the pull's Task; once every page has come (whatever the
    numbering), the key is dropped and our transfer notification is enqueued."""
    current = repo.current("Task", task_id)
    task = _strip(current.content if current is not None else None)
    outputs = task.setdefault("output", [])
    page = int(body.get("pageNumber") or 0)
    if not any(o["type"]["text"] == "page" and o.get("valueInteger") == page for o in outputs):
        outputs.append({"type": {"text": "page"}, "valueInteger": page})
    for status in statuses:
        label = "careContext " + status["careContextReference"]
        known = next((o for o in outputs if o["type"]["text"] == label), None)
        if known is None:
            outputs.append({"type": {"text": label}, "valueString": status["hiStatus"]})
        elif known["valueString"] != "OK":
            known["valueString"] = status["hiStatus"]
    pages = sum(1 for o in outputs if o["type"]["text"] == "page")
    if pages >= int(body.get("pageCount") or 1):
        task["status"] = "completed"
        task["input"] = [i for i in task.get("input", []) if i["type"]["text"] != "keyMaterial"]  # spent
        if not task["input"]:
            del task["input"]
        responses = [{"careContextReference": o["type"]["text"].split(" ", 1)[1], "hiStatus": o["valueString"],
                      "description": "Stored" if o["valueString"] == "OK" else "Not a care context of the consent"}
                     for o in outputs if o["type"]["text"].startswith("careContext ")]
        abdm.callback(repo, HI_NOTIFY, {"notification": {
            "consentId": grant.artefact, "transactionId": txn, "doneAt": timestamp(),
            "notifier": {"type": "HIU", "id": abdm.settings.hiu_id},
            "statusNotification": {"sessionStatus": "TRANSFERRED", "hipId": hip.get("identifier", {}).get("value"),
                                   "statusResponses": responses}}},
            answering=None, headers=abdm.hiu_headers(), key=f"hiu-notify:{txn}")
    repo.update("Task", task_id, task)


def _store(repo: Repository, cid: str, grant: consents.Granted, hip: dict[str, Any], document: dict[str, Any]) -> None:
    identifier = document["identifier"]
    key = f"{identifier.get('system', '')}|{identifier['value']}"
    bundle_id = f"abdm-doc-{uuid.uuid5(uuid.NAMESPACE_URL, DOCUMENT + '/' + key)}"
    stored = {k: v for k, v in document.items() if k != "meta"}
    stored["id"] = bundle_id
    current = repo.current("Bundle", bundle_id)
    if current is None or current.deleted or _strip(current.content) != stored:
        repo.update("Bundle", bundle_id, stored)  # the same document pulled again replaces, never duplicates
    provenance_id = f"abdm-prov-{uuid.uuid5(uuid.NAMESPACE_URL, f'{DOCUMENT}/{key}/{cid}')}"
    provenance = {"resourceType": "Provenance", "id": provenance_id,
                  "target": [{"reference": f"Bundle/{bundle_id}"}], "recorded": instant(datetime.now(UTC)),
                  "policy": [f"{consents.ARTEFACT_SYSTEM}/{grant.artefact}"],
                  "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                           "code": "CREATE"}]},
                  "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                            "provenance-participant-type", "code": "author"}]},
                             "who": hip}],
                  "entity": [{"role": "source", "what": {"reference": f"Consent/{cid}"}}]}
    if repo.current("Provenance", provenance_id) is None:
        repo.update("Provenance", provenance_id, provenance)
