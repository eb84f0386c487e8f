"""The payloads we send, as NRCeS "FHIR IG for ABDM" 6.5.0 bundles (``type = collection``, anchor first,
``fullUrl = urn:uuid:…``): CoverageEligibilityRequestBundle, ClaimBundle; Communication answers in a
TaskBundle-shaped collection.

What goes in is exactly what the anchor references: its patient, coverages (and their payor), insurer,
provider and enterer, the encounters of its items, its diagnoses and procedures, and the DocumentReferences
given as supporting information. Anything in a patient's compartment must be the anchor's own patient's,
else nothing is sent (422): no other person's data can ride along. A reference to something not in the
bundle keeps only its display. Each resource is read with the caller's access, so a caller who could not
read a referenced resource cannot send it either.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fhir_server.auth.compartment import patients_of
from fhir_server.binary.store import BlobStore
from fhir_server.errors import INVALID, PROCESSING, FhirError, Issue
from fhir_server.storage.repository import Repository
from fhir_server.validation.operation import validate_all
from fhir_server.validation.service import StoreDefinitions
from interfaces.claims import attachments
from interfaces.claims.exchange import CORRELATION_SYSTEM, EXCHANGE

NRCES = "https://nrces.in/ndhm/fhir/r4/StructureDefinition/"
# A Communication (the answer to an insurer's query) goes in a TaskBundle: a ``deliver`` Task first whose
# ``input`` includes it (NRCeS TaskBundleForCommunicationResponse).
BUNDLE_PROFILE = {"Claim": NRCES + "ClaimBundle", "Communication": NRCES + "TaskBundle",
                  "CoverageEligibilityRequest": NRCES + "CoverageEligibilityRequestBundle"}
TASK_CODES = "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-task-codes"
_NAMESPACE = uuid.UUID("6f1d6c4e-2b5a-4f7e-9a51-3c1f0e2d7b10")  # fullUrls: stable per resource, opaque


def full_url(reference: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, reference)}"


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        ref = value.get("reference")
        return [ref] if isinstance(ref, str) else []
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _wanted(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """(element, reference) pairs of an anchor or included resource that go into the bundle."""
    r = resource
    pairs: list[tuple[str, Any]] = [("patient", r.get("patient")), ("subject", r.get("subject")),
                                    ("insurer", r.get("insurer")), ("provider", r.get("provider")),
                                    ("enterer", r.get("enterer")), ("facility", r.get("facility")),
                                    ("payor", r.get("payor")),
                                    ("beneficiary", r.get("beneficiary"))]
    for ins in r.get("insurance") or []:
        pairs.append(("insurance.coverage", ins.get("coverage")))
    for item in r.get("item") or []:
        pairs.append(("item.encounter", item.get("encounter")))
    for dx in r.get("diagnosis") or []:
        pairs.append(("diagnosis.diagnosisReference", dx.get("diagnosisReference")))
    for px in r.get("procedure") or []:
        pairs.append(("procedure.procedureReference", px.get("procedureReference")))
    for info in r.get("supportingInfo") or []:
        pairs.append(("supportingInfo.valueReference", info.get("valueReference")))
    for pl in r.get("payload") or []:
        pairs.append(("payload.contentReference", pl.get("contentReference")))
    return [(element, ref) for element, value in pairs for ref in _refs(value)]


def _clean(resource: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k != "meta"}
    profiles = (resource.get("meta") or {}).get("profile")
    if profiles:
        out["meta"] = {"profile": profiles}
    ext = [e for e in resource.get("extension") or [] if e.get("url") != EXCHANGE]
    out.pop("extension", None)
    if ext:
        out["extension"] = ext
    ids = [i for i in resource.get("identifier") or [] if i.get("system") != CORRELATION_SYSTEM] \
        if isinstance(resource.get("identifier"), list) else resource.get("identifier")
    out.pop("identifier", None)
    if ids:
        out["identifier"] = ids
    return out


def _rewrite(value: Any, urls: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_rewrite(v, urls) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _rewrite(v, urls) for k, v in value.items()}
    ref = value.get("reference")
    if isinstance(ref, str) and not ref.startswith(("urn:", "#")):
        if ref in urls:
            out["reference"] = urls[ref]
        else:  # not sent: keep what a person reads, not our id
            out.pop("reference")
            if not out:
                out["display"] = ref.split("/")[0]
    return out


def collect(repo: Repository, anchor_type: str, anchor_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The anchor and what it references (one level, plus a coverage's payor), each read with the caller's
    access; 422 when any of them belongs to another patient."""
    anchor = repo.read(anchor_type, anchor_id).content or {}
    patient_ref = next((ref for ref in _refs(anchor.get("patient") or anchor.get("subject"))), None)
    if not patient_ref or not patient_ref.startswith("Patient/"):
        raise FhirError(422, INVALID, f"{anchor_type}.patient must reference the Patient", (f"{anchor_type}.patient",))
    patient_id = patient_ref.split("/")[1]
    found: dict[str, dict[str, Any]] = {f"{anchor_type}/{anchor_id}": anchor}
    queue = [(f"{anchor_type}.{element}", ref, 0) for element, ref in _wanted(anchor)]
    while queue:
        element, ref, depth = queue.pop(0)
        parts = ref.split("/")
        if len(parts) != 2 or ref in found:
            continue
        content = repo.read(parts[0], parts[1]).content or {}
        others = patients_of(parts[0], content) - {patient_id}
        if others:  # never another person's record, whatever the anchor points at
            raise FhirError(422, PROCESSING, f"{element} refers to {ref}, which belongs to another patient; "
                                             "nothing was sent", (element,))
        found[ref] = content
        if depth == 0 and parts[0] in ("Coverage",):
            queue += [(f"Coverage.{e}", r, 1) for e, r in _wanted(content) if e in ("payor", "beneficiary")]
    return anchor, list(found.values())


def build(repo: Repository, anchor_type: str, anchor_id: str, *, store: BlobStore,
          profile: str | None = None) -> dict[str, Any]:
    """The NRCeS bundle for the anchor (or ``profile``'s, e.g. a Da Vinci PAS request bundle: the same
    collection with the Claim first; ``""``: none), validated against that profile when its IG is installed.
    Attachments pointing at our Binaries are embedded from ``store`` (interfaces/claims/attachments.py)."""
    anchor, resources = collect(repo, anchor_type, anchor_id)
    patient_id = next(iter(_refs(anchor.get("patient") or anchor.get("subject"))), "").split("/")[-1]
    resources = [attachments.embed(repo, store, r, patient_id) for r in resources]
    urls = {f"{r['resourceType']}/{r['id']}": full_url(f"{r['resourceType']}/{r['id']}") for r in resources}
    entries = []
    for r in resources:
        ref = f"{r['resourceType']}/{r['id']}"
        content = _rewrite(_clean(r), urls)
        content["id"] = urls[ref].removeprefix("urn:uuid:")
        entries.append({"fullUrl": urls[ref], "resource": content})
    if anchor_type == "Communication":
        entries.insert(0, _deliver_task(entries[0]["fullUrl"]))
    bundle_id = str(uuid.uuid4())
    profile = BUNDLE_PROFILE.get(anchor_type) if profile is None else profile  # "": no profile
    meta: dict[str, Any] = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                          "code": "V", "display": "very restricted"}]}
    if profile:
        meta["profile"] = [profile]
    bundle = {"resourceType": "Bundle", "id": bundle_id, "meta": meta,
              "identifier": {"value": bundle_id}, "type": "collection",
              "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"), "entry": entries}
    if profile:
        validate(repo, bundle, profile)
    return bundle


def validate(repo: Repository, bundle: dict[str, Any], profile: str) -> None:
    """Against ``profile`` when its IG package is installed (``fhir-server packages install``): errors
    are the caller's to fix (422), nothing is sent."""
    if StoreDefinitions(repo).profile(profile) is None:
        return
    issues = validate_all(repo, bundle, "Bundle", [], requested=[profile])
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise FhirError(422, [Issue(PROCESSING, f"The bundle built for sending does not conform to {profile}; "
                                                "nothing was sent"), *errors[:20]])


def _deliver_task(communication_url: str) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    return {"fullUrl": f"urn:uuid:{task_id}", "resource": {
        "resourceType": "Task", "id": task_id, "meta": {"profile": [NRCES + "Task"]}, "status": "completed",
        "intent": "order", "code": {"coding": [{"system": TASK_CODES, "code": "deliver"}]},
        "authoredOn": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/financialtaskinputtype",
                                        "code": "include"}]},
                   "valueReference": {"reference": communication_url, "display": "Communication"}}]}}
