"""Health records as NRCeS document Bundles (FHIR IG for ABDM 6.5.0): one per care context and HI type.

A document Bundle (profile DocumentBundle: ``type`` document, ``identifier`` system+value, ``timestamp``,
``meta.versionId``) whose first entry is a Composition with the record profile, then every resource it
refers to. References between included resources are rewritten to the entries' ``urn:uuid`` full URLs
(stable: derived from the HIP id and the stored reference, so a re-pull sends the same document identity).

Only what the consent covers goes in: the caller passes the HI type and the date range, and each clinical
resource whose own date lies outside the range is left out (a care context outside it is never built).
What goes where is data, in records.json: each HI type's profile, Composition.type and title, its sections,
and how a billing Invoice meets the IG's Invoice profile (invoice_record.py). Profiles, HI types and
section codes: PROTOCOLS.md §B10 and the IG's StructureDefinitions under shared/india.
"""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_server.storage.repository import Repository, instant

PROFILE = "https://nrces.in/ndhm/fhir/r4/StructureDefinition/"
SNOMED = "http://snomed.info/sct"
DOCUMENT_BUNDLE = PROFILE + "DocumentBundle"
NAMESPACE = uuid.UUID("6f1c1b3e-4a4d-4c35-9d59-0a5f3c7d2b11")  # our uuid5 namespace for document ids
MAPPING: dict[str, Any] = json.loads((Path(__file__).parent / "records.json").read_text())
RECORDS: dict[str, dict[str, Any]] = MAPPING["records"]
ALIASES: dict[str, str] = MAPPING["aliases"]
HI_TYPES = tuple(RECORDS)
BODY_MEASUREMENT = frozenset(MAPPING["bodyMeasurement"])


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display}


def _type(spec: dict[str, Any]) -> dict[str, Any]:
    """Composition.type: a SNOMED coding with its display as text, or (Wellness, Invoice) the fixed text."""
    if "code" in spec:
        return {"coding": [dict(spec)], "text": spec["display"]}
    return {"text": spec["text"]}


def hi_type_of(name: str) -> str:
    return ALIASES.get(name, name)


NO_ENCOUNTER_PARAMETER = {"AllergyIntolerance", "Immunization"}  # R4 defines no encounter search parameter
# Resources pulled in when referenced (authors, performers, medications, a report's results, specimens,
# an invoice's charges).
FOLLOWED = {"Practitioner", "PractitionerRole", "Organization", "Medication", "Observation", "Specimen",
            "ChargeItem"}
# Each clinical resource's own date (left out when outside the consented range).
DATE_ELEMENTS = ("effectiveDateTime", "issued", "authoredOn", "recordedDate", "onsetDateTime", "performedDateTime",
                 "occurrenceDateTime", "date", "created")
INPATIENT = ("IMP", "ACUTE", "NONAC")


def observation_kind(observation: dict[str, Any]) -> str:
    """laboratory | body-measurement | vital-signs | other: where an Observation goes in a document."""
    categories = {c.get("code") for cat in observation.get("category", []) for c in cat.get("coding", [])}
    if "laboratory" in categories:
        return "laboratory"
    codes = {c.get("code") for c in (observation.get("code") or {}).get("coding", [])}
    if codes & BODY_MEASUREMENT:
        return "body-measurement"
    return "vital-signs" if "vital-signs" in categories else "other"


@dataclass(frozen=True)
class DateRange:
    start: datetime
    end: datetime

    def covers(self, when: str) -> bool:
        """A FHIR date/dateTime within the range (a bare date counts from its first instant); no date: yes."""
        if not when:
            return True
        moment = parse_instant(when)
        return moment is None or self.start <= moment <= self.end

    def within(self, other: DateRange) -> bool:
        return other.start <= self.start and self.end <= other.end


def parse_instant(value: str) -> datetime | None:
    text = value.strip().replace("Z", "+00:00")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _own_date(resource: dict[str, Any]) -> str:
    for element in DATE_ELEMENTS:
        value = resource.get(element)
        if isinstance(value, str):
            return value
    for element in ("effectivePeriod", "performedPeriod", "period"):
        value = resource.get(element)
        if isinstance(value, dict) and isinstance(value.get("start"), str):
            return str(value["start"])
    return ""


class DocumentBuilder:
    """Builds the documents of one care context inside a unit of work (the caller's access: the system,
    for one consent)."""

    def __init__(self, repo: Repository, hip_id: str, hip_name: str, identifier_system: str) -> None:
        self.repo = repo
        self.hip_id = hip_id
        self.hip_name = hip_name
        self.identifier_system = identifier_system

    def _urn(self, reference: str) -> str:
        return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{self.hip_id}|{reference}')}"

    def _get(self, reference: str) -> dict[str, Any] | None:
        rtype, _, rid = reference.partition("/")
        version = self.repo.current(rtype, rid) if rtype and rid and "/" not in rid else None
        return version.content if version is not None and not version.deleted else None

    def _linked(self, rtype: str, encounter: str, dates: DateRange) -> list[dict[str, Any]]:
        if rtype in NO_ENCOUNTER_PARAMETER:  # searched by patient, then matched on the element
            context = self._get(encounter) or {}
            params = [("patient", str(context.get("subject", {}).get("reference", "")))]
        else:
            params = [("encounter", encounter)]
        ids = self.repo.find_ids(rtype, params, limit=500)
        found = [v.content for v in self.repo.read_many([(rtype, i) for i in ids]) if v.content and (
            rtype not in NO_ENCOUNTER_PARAMETER or v.content.get("encounter", {}).get("reference") == encounter)]
        return sorted((r for r in found if dates.covers(_own_date(r))), key=lambda r: (_own_date(r), r["id"]))

    def build(self, care_context: str, hi_type: str, dates: DateRange) -> list[dict[str, Any]]:
        """The documents of ``hi_type`` for ``care_context`` (``Encounter/1``...) within ``dates``."""
        hi_type = hi_type_of(hi_type)
        context = self._get(care_context)
        if context is None or hi_type not in RECORDS:
            return []
        rtype = context["resourceType"]
        from interfaces.abdm.identity import care_context_date  # local: identity imports nothing from here

        if not dates.covers(care_context_date(context)):
            return []
        if rtype == "Encounter":
            return self._encounter(care_context, context, hi_type, dates)
        if rtype == "DiagnosticReport" and hi_type == "DiagnosticReport":
            return [self._document(hi_type, context, None, [("Diagnostic studies report", "721981007", [context])])]
        if rtype == "DocumentReference" and hi_type == "HealthDocumentRecord":
            return [self._document(hi_type, context, None, [("Record artifact", "419891008", [context])])]
        return []

    def _encounter(self, ref: str, encounter: dict[str, Any], hi_type: str, dates: DateRange) -> list[dict[str, Any]]:
        inpatient = (encounter.get("class") or {}).get("code") in INPATIENT
        if hi_type == "Prescription":
            orders = self._linked("MedicationRequest", ref, dates)
            return [self._document(hi_type, encounter, encounter, [("Prescription record", "440545006", orders)])] \
                if orders else []
        if hi_type == "DiagnosticReport":
            return [self._document(hi_type, report, encounter, [("Diagnostic studies report", "721981007", [report])])
                    for report in self._linked("DiagnosticReport", ref, dates)]
        if hi_type == "ImmunizationRecord":
            doses = self._linked("Immunization", ref, dates)
            return [self._document(hi_type, encounter, encounter, [("Immunization record", "41000179103", doses)])] \
                if doses else []
        if hi_type == "Invoice":
            from interfaces.abdm.invoice_record import encounter_invoices

            return [self._document(hi_type, invoice, encounter, [("Invoice Details", None, [invoice])])
                    for invoice in encounter_invoices(self.repo, ref, encounter, dates)]
        if hi_type in ("OPConsultation", "DischargeSummary") and (hi_type == "DischargeSummary") != inpatient:
            return []
        sections = []
        for section in MAPPING["sections"].get(hi_type, []):
            found = self._linked(section["resource"], ref, dates)
            if section["resource"] == "Observation":  # lab results travel in DiagnosticReport records
                found = [o for o in found if observation_kind(o) in section["observations"]]
            if found:
                sections.append((section["title"], section.get("code"), found))
        return [self._document(hi_type, encounter, encounter, sections)] if sections else []

    def _document(self, hi_type: str, anchor: dict[str, Any], encounter: dict[str, Any] | None,
                  sections: list[tuple[str, str | None, list[dict[str, Any]]]]) -> dict[str, Any]:
        record = RECORDS[hi_type]
        entries: dict[str, dict[str, Any]] = {}  # stored reference -> resource (insertion order kept)

        def include(resource: dict[str, Any]) -> None:
            key = f"{resource['resourceType']}/{resource['id']}"
            if key in entries:
                return
            entries[key] = resource
            for ref in _references(resource):
                if ref.split("/")[0] in FOLLOWED and ref not in entries:
                    found = self._get(ref)
                    if found is not None:
                        include(found)

        subject = str((anchor.get("subject") or {}).get("reference", ""))
        patient = self._get(subject) if subject.startswith("Patient/") else None
        if patient is not None:
            include(patient)
        if encounter is not None:
            include(encounter)
        for _display, _section, resources in sections:
            for resource in resources:
                include(resource)
        organization = {"resourceType": "Organization", "id": f"abdm-hip-{self.hip_id}"[:64], "name": self.hip_name,
                        "identifier": [{"system": "https://facility.ndhm.gov.in", "value": self.hip_id}]}
        custodian = self._urn(f"Organization/{organization['id']}")
        anchor_ref = f"{anchor['resourceType']}/{anchor['id']}"
        document_id = str(uuid.uuid5(NAMESPACE, f"{self.hip_id}|{anchor_ref}|{hi_type}"))
        now = instant(datetime.now(UTC))
        composition: dict[str, Any] = {
            "resourceType": "Composition", "id": document_id,
            "meta": {"profile": [PROFILE + record["profile"]]},
            "identifier": {"system": self.identifier_system, "value": document_id},
            "status": "final", "type": _type(record["type"]), "title": record["title"],
            "date": _own_date(anchor) or now,
            "author": [self._author(anchor, encounter, entries) or {"reference": custodian, "display": self.hip_name}],
            "custodian": {"reference": custodian, "display": self.hip_name},
            "section": [{"title": display, **({"code": _code(code, display)} if code else {}),
                         "entry": [{"reference": self._urn(f"{r['resourceType']}/{r['id']}"),
                                    "type": r["resourceType"]} for r in resources]}
                        for display, code, resources in sections],
        }
        if patient is not None:
            composition["subject"] = {"reference": self._urn(subject), "display": _name(patient)}
        if encounter is not None:
            composition["encounter"] = {"reference": self._urn(f"Encounter/{encounter['id']}")}
        bundle_entries = [{"fullUrl": f"urn:uuid:{document_id}", "resource": composition}]
        for key, resource in [*entries.items(), (f"Organization/{organization['id']}", organization)]:
            bundle_entries.append({"fullUrl": self._urn(key),
                                   "resource": self._rewrite(resource, entries, key, encounter)})
        return {"resourceType": "Bundle", "id": document_id,
                "meta": {"versionId": "1", "lastUpdated": now, "profile": [DOCUMENT_BUNDLE]},
                "identifier": {"system": self.identifier_system, "value": document_id},
                "type": "document", "timestamp": now, "entry": bundle_entries}

    def _author(self, anchor: dict[str, Any], encounter: dict[str, Any] | None,
                entries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        candidates = [*(p.get("individual", {}) for p in (encounter or {}).get("participant", [])),
                      *anchor.get("performer", []), *anchor.get("resultsInterpreter", []), anchor.get("requester", {})]
        for ref in candidates:
            target = ref.get("reference", "") if isinstance(ref, dict) else ""
            if target in entries and target.split("/")[0] in ("Practitioner", "PractitionerRole", "Organization"):
                return {"reference": self._urn(target)}
        return None

    def _rewrite(self, resource: dict[str, Any], entries: dict[str, dict[str, Any]], key: str,
                 encounter: dict[str, Any] | None) -> dict[str, Any]:
        out = copy.deepcopy(resource)
        if out.get("resourceType") in ("Invoice", "ChargeItem"):  # before ids and meta go: they are used
            from interfaces.abdm.invoice_record import conform

            conform(out, encounter, self.identifier_system)
        out["id"] = self._urn(key).removeprefix("urn:uuid:")
        out.pop("meta", None)  # our versions and tags are ours; the document carries its own

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                ref = node.get("reference")
                if isinstance(ref, str) and ref in entries:
                    node["reference"] = self._urn(ref)
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(out)
        return _conform(out)


V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
NDHM_IDENTIFIER_TYPE = "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-identifier-type-code"
ABHA_TYPE = {"system": NDHM_IDENTIFIER_TYPE, "code": "ABHA", "display": "Ayushman Bharat Health Account (ABHA) ID"}
DEFAULT_IDENTIFIER_TYPE = {
    "Patient": {"system": V2_0203, "code": "MR", "display": "Medical record number"},
    "Practitioner": {"system": V2_0203, "code": "MD", "display": "Medical License number"},
    "Organization": {"system": V2_0203, "code": "PRN", "display": "Provider number"},
}


def _conform(resource: dict[str, Any]) -> dict[str, Any]:
    """What the NRCeS profiles require of the shape and we can say without inventing clinical facts: a
    typed identifier (ABHA identifiers as ABHA, others by what the resource is), a name's text."""
    from interfaces.abdm.identity import ABHA_ADDRESS_SYSTEM, ABHA_NUMBER_SYSTEM

    rtype = resource.get("resourceType", "")
    default = DEFAULT_IDENTIFIER_TYPE.get(rtype)
    if default is not None:
        for identifier in resource.get("identifier") or []:
            codings = (identifier.get("type") or {}).get("coding") or []
            if not any(c.get("system") and c.get("code") and c.get("display") for c in codings):
                abha = identifier.get("system") in (ABHA_NUMBER_SYSTEM, ABHA_ADDRESS_SYSTEM)
                identifier["type"] = {**(identifier.get("type") or {}), "coding": [ABHA_TYPE if abha else default]}
        for name in resource.get("name") or [] if rtype != "Organization" else []:
            if isinstance(name, dict) and not name.get("text"):
                parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
                name["text"] = " ".join(p for p in parts if p)
    return resource


def _references(resource: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref.count("/") == 1 and not ref.startswith(("urn:", "#", "http")):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(resource)
    return found


def _name(patient: dict[str, Any]) -> str:
    from interfaces.abdm.identity import patient_name

    return patient_name(patient)
