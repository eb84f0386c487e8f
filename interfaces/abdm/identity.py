"""ABHA identifiers on Patient, patient discovery, and care contexts.

ABHA number: 14 digits shown ``XX-XXXX-XXXX-XXXX``; stored hyphenated, sent to the gateway without hyphens.
ABHA address: ``handle@suffix`` (suffix = the consent manager: ``sbx`` sandbox, ``abdm`` production; ``ndhm``
in old examples); handle 8-18 characters, letters and digits with at most one ``.`` and one ``_``, not at
either end (NHA's AbhaValidator; PROTOCOLS.md §B9), or the 14-digit number itself. No check digit is
published, so none is checked.

A care context is what a patient links to their ABHA and a consent names: each Encounter, and each
DocumentReference or DiagnosticReport that belongs to no Encounter. Its reference number is the FHIR
reference (``Encounter/123``): stable for the record's life and unique in the hospital.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from fhir_server.errors import INVALID, FhirError
from fhir_server.storage.repository import Repository, Version

ABHA_NUMBER_SYSTEM = "https://healthid.ndhm.gov.in"  # as in the NRCeS IG examples
ABHA_ADDRESS_SYSTEM = "https://healthid.ndhm.gov.in/abha-address"  # ours: the IG names none
IDENTIFIER_TYPE_SYSTEM = "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-identifier-type-code"

_NUMBER = re.compile(r"^\d{2}-?\d{4}-?\d{4}-?\d{4}$")
_HANDLE = re.compile(r"(^[a-zA-Z0-9]+[.]?[a-zA-Z0-9]*[_]?[a-zA-Z0-9]+$)"
                     r"|(^[a-zA-Z0-9]+[_]?[a-zA-Z0-9]*[.]?[a-zA-Z0-9]+$)")
CM_SUFFIXES = ("sbx", "abdm", "ndhm")

CARE_CONTEXT_TYPES = ("Encounter", "DiagnosticReport", "DocumentReference")
MAX_CARE_CONTEXTS = 1000


def abha_number(value: str) -> str:
    """The number in its display form (XX-XXXX-XXXX-XXXX); ValueError when it is not one."""
    if not isinstance(value, str) or not _NUMBER.match(value.strip()):
        raise ValueError("an ABHA number has 14 digits (XX-XXXX-XXXX-XXXX)")
    digits = value.strip().replace("-", "")
    return f"{digits[:2]}-{digits[2:6]}-{digits[6:10]}-{digits[10:]}"


def gateway_number(value: str) -> str:
    """The number as v3 gateway payloads carry it: 14 digits, no hyphens."""
    return abha_number(value).replace("-", "")


def abha_address(value: str) -> str:
    """The address, lower-cased; ValueError when it is not ``handle@cm``."""
    if not isinstance(value, str) or value.count("@") != 1:
        raise ValueError("an ABHA address is handle@sbx or handle@abdm")
    handle, suffix = value.strip().split("@")
    if suffix.lower() not in CM_SUFFIXES:
        raise ValueError(f"an ABHA address ends in @{' or @'.join(CM_SUFFIXES)}")
    if not (re.fullmatch(r"\d{14}", handle) or (8 <= len(handle) <= 18 and _HANDLE.match(handle))):
        raise ValueError("an ABHA address handle has 8-18 letters or digits, at most one '.' and one '_'")
    return f"{handle.lower()}@{suffix.lower()}"


def check_patient_identifiers(resource: dict[str, Any]) -> None:
    """BEFORE_VALIDATE hook body: ABHA identifiers on a Patient must be well formed (400 naming the element)."""
    for i, identifier in enumerate(resource.get("identifier") or []):
        if not isinstance(identifier, dict):
            continue
        system, value = identifier.get("system"), str(identifier.get("value", ""))
        try:
            if system == ABHA_NUMBER_SYSTEM:
                abha_number(value)
            elif system == ABHA_ADDRESS_SYSTEM:
                abha_address(value)
        except ValueError as exc:
            raise FhirError(400, INVALID, str(exc), (f"Patient.identifier[{i}].value",)) from None


def identifier_values(patient: dict[str, Any], system: str) -> list[str]:
    return [i["value"] for i in patient.get("identifier") or []
            if isinstance(i, dict) and i.get("system") == system and isinstance(i.get("value"), str)]


def patient_name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or []:
        if name.get("text"):
            return str(name["text"])
        parts = [*name.get("given", []), name.get("family", "")]
        if any(parts):
            return " ".join(p for p in parts if p)
    return ""


GENDER = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


def _normal(name: str) -> str:
    return " ".join(name.lower().split())


def demographics_match(patient: dict[str, Any], name: str, gender: str, year_of_birth: Any, *,
                       mpi: bool = False) -> bool:
    """The spec's rule: the name alike, the same gender, the year of birth within 2. With the front desk's
    master patient index on (``mpi``), names are compared as it compares them (tokens in any order, spelling
    variants, initials: a score of at least its "probable" grade) and a patient merged into another is never
    found; otherwise the names must be equal (case and spacing aside)."""
    if not name:
        return False
    if mpi:
        # local: the front desk imports this module (its ABHA checks)
        from fhir_server.workflows.frontdesk.registration import merged
        from fhir_server.workflows.frontdesk.scoring import match_config, name_score

        similar = name_score({"name": [{"text": name}]}, patient)
        if merged(patient) or similar is None or similar < match_config().probable:
            return False
    elif _normal(patient_name(patient)) != _normal(name):
        return False
    if gender and GENDER.get(patient.get("gender", ""), "") != gender.upper():
        return False
    birth = str(patient.get("birthDate", ""))[:4]
    try:
        return abs(int(birth) - int(year_of_birth)) <= 2
    except (TypeError, ValueError):
        return False


def discover(repo: Repository, query: dict[str, Any], mr_system: str | None, *,
             mpi: bool = False) -> tuple[Version | None, list[str]]:
    """The one patient a discovery request designates, and what matched; (None, []) for none or several.

    A verified identifier (ABHA number, ABHA address, mobile) must match, and the demographics too; our own
    medical record number (unverified) matches with the demographics (``mpi``: demographics_match)."""
    name, gender, yob = query.get("name", ""), query.get("gender", ""), query.get("yearOfBirth")
    candidates: dict[str, tuple[Version, set[str]]] = {}

    def search(params: list[tuple[str, str]], by: str) -> None:
        for pid in repo.find_ids("Patient", params, limit=10):
            version = repo.current("Patient", pid)
            if version is not None and not version.deleted and version.content:
                candidates.setdefault(pid, (version, set()))[1].add(by)

    ids = [*(query.get("verifiedIdentifiers") or []), *(query.get("unverifiedIdentifiers") or [])]
    for ident in ids:
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        kind, value = str(ident.get("type", "")).upper(), ident["value"]
        try:
            if kind in ("ABHA_NUMBER", "NDHM_HEALTH_NUMBER"):
                search([("identifier", f"{ABHA_NUMBER_SYSTEM}|{abha_number(value)}")], "ABHA_NUMBER")
            elif kind in ("ABHAADDRESS", "ABHA_ADDRESS", "HEALTH_ID"):
                search([("identifier", f"{ABHA_ADDRESS_SYSTEM}|{abha_address(value)}")], "abhaAddress")
            elif kind == "MOBILE":
                digits = re.sub(r"\D", "", value)[-10:]
                for phone in (digits, f"+91{digits}", f"+91-{digits}"):
                    search([("phone", phone)], "MOBILE")
            elif kind == "MR" and mr_system:
                search([("identifier", f"{mr_system}|{value}")], "MR")
        except ValueError:
            continue
    patient_id = query.get("id")
    if isinstance(patient_id, str) and "@" in patient_id:  # the ABHA address the request is for
        with contextlib.suppress(ValueError):
            search([("identifier", f"{ABHA_ADDRESS_SYSTEM}|{abha_address(patient_id)}")], "abhaAddress")
    matches = [(v, by) for v, by in candidates.values()
               if v.content is not None and demographics_match(v.content, name, gender, yob, mpi=mpi)]
    if len(matches) != 1:
        return None, []
    return matches[0][0], sorted(matches[0][1])


def _date(resource: dict[str, Any]) -> str:
    rtype = resource.get("resourceType")
    if rtype == "Encounter":
        return str((resource.get("period") or {}).get("start", ""))
    if rtype == "DiagnosticReport":
        return str(resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start")
                   or resource.get("issued") or "")
    return str(resource.get("date") or (resource.get("context") or {}).get("period", {}).get("start") or "")


def care_context_date(resource: dict[str, Any]) -> str:
    return _date(resource)


def _text(concept: Any) -> str:
    if isinstance(concept, list):
        concept = concept[0] if concept else {}
    if not isinstance(concept, dict):
        return ""
    codings = concept.get("coding") or [{}]
    return str(concept.get("text") or codings[0].get("display") or codings[0].get("code") or "")


def display(resource: dict[str, Any]) -> str:
    """What the patient sees in their app for this care context: kind, what, date."""
    rtype = resource.get("resourceType")
    when = _date(resource)[:10]
    if rtype == "Encounter":
        kind = "Admission" if (resource.get("class") or {}).get("code") in ("IMP", "ACUTE", "NONAC") else "Visit"
        what = _text(resource.get("type")) or _text(resource.get("serviceType"))
    elif rtype == "DiagnosticReport":
        kind, what = "Report", _text(resource.get("code"))
    else:
        kind, what = "Document", str(resource.get("description") or _text(resource.get("type")))
    return " ".join(p for p in (kind, what, when) if p)


def hi_type(resource: dict[str, Any]) -> str:
    """The HI type a care context is offered under (v3 groups discovered care contexts by it)."""
    rtype = resource.get("resourceType")
    if rtype == "Encounter":
        inpatient = (resource.get("class") or {}).get("code") in ("IMP", "ACUTE", "NONAC")
        return "DischargeSummary" if inpatient else "OPConsultation"
    return "DiagnosticReport" if rtype == "DiagnosticReport" else "HealthDocumentRecord"


def care_contexts(repo: Repository, patient_id: str) -> list[dict[str, Any]]:
    """The patient's care contexts: Encounters, and reports / documents outside any Encounter."""
    out: list[Version] = []
    subject = f"Patient/{patient_id}"
    for rtype in CARE_CONTEXT_TYPES:
        params = [("subject", subject)]
        if rtype != "Encounter":
            params.append(("encounter:missing", "true"))
        ids = repo.find_ids(rtype, params, limit=MAX_CARE_CONTEXTS)
        out.extend(repo.read_many([(rtype, i) for i in ids]))
    return [{"referenceNumber": f"{v.resource_type}/{v.id}", "display": display(v.content or {}),
             "hiType": hi_type(v.content or {}), "date": care_context_date(v.content or {})}
            for v in sorted(out, key=lambda v: (care_context_date(v.content or {}), v.resource_type, v.id))]


def group_by_hi_type(patient: Version, contexts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """v3's ``patient`` list: one entry per HI type with its care contexts (WRAP OnDiscoverV3Request)."""
    groups: dict[str, list[dict[str, str]]] = {}
    for cc in contexts:
        groups.setdefault(cc["hiType"], []).append({"referenceNumber": cc["referenceNumber"],
                                                     "display": cc["display"]})
    name = patient_name(patient.content or {})
    return [{"referenceNumber": f"Patient/{patient.id}", "display": name, "careContexts": ccs,
             "hiType": hi, "count": len(ccs)} for hi, ccs in groups.items()]
