"""Synthea-style patient records as FHIR R4 transaction Bundles, for the benches.

Two sources: the real Synthea sample Bundles in ``../shared/samples/synthea`` (re-identified with fresh
UUIDs each time, turned into transactions, with Synthea-style MedicationRequests and pharmacy Claims added
because those samples have none), and a generator of our own so the benches run without ``../shared``.
Both give a Patient with Organizations, Practitioners, Encounters, Observations, Conditions,
MedicationRequests, Claims and ExplanationOfBenefits linked by ``urn:uuid:`` references.
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

SAMPLES_GLOB = "samples/synthea/*/*/original_fhir_json/*.json"
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

SNOMED, LOINC, RXNORM = "http://snomed.info/sct", "http://loinc.org", "http://www.nlm.nih.gov/research/umls/rxnorm"
ENCOUNTER_TYPES = [("185349003", "Encounter for check up (procedure)"), ("185345009", "Encounter for symptom"),
                   ("162673000", "General examination of patient (procedure)"),
                   ("50849002", "Emergency room admission")]
CONDITIONS = [("444814009", "Viral sinusitis (disorder)"), ("195662009", "Acute viral pharyngitis (disorder)"),
              ("10509002", "Acute bronchitis (disorder)"), ("840544004", "Suspected COVID-19"),
              ("38341003", "Hypertension"), ("15777000", "Prediabetes")]
VITALS = [("8302-2", "Body Height", "cm", 120.0, 190.0), ("29463-7", "Body Weight", "kg", 20.0, 110.0),
          ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 15.0, 35.0),
          ("8867-4", "Heart rate", "/min", 55.0, 110.0), ("9279-1", "Respiratory rate", "/min", 12.0, 22.0),
          ("8310-5", "Body temperature", "Cel", 36.0, 39.5)]
MEDICATIONS = [("313782", "Acetaminophen 325 MG Oral Tablet"), ("562251", "Amoxicillin 250 MG Oral Capsule"),
               ("198405", "Ibuprofen 100 MG Oral Tablet"), ("314076", "lisinopril 10 MG Oral Tablet")]
GIVEN = ["Bibi", "Cris", "Denisha", "Hipolito", "Les", "Leta", "Pablo", "Philip", "Raymond", "Roland"]
FAMILY = ["Schowalter", "Rath", "Keeling", "Schulist", "Bernier", "Kihn", "Sporer", "Schultz", "Ziemann"]
CITIES = ["Marlborough", "Worcester", "Boston", "Springfield", "Lowell", "Cambridge"]


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _money(value: float) -> dict[str, Any]:
    return {"value": round(value, 2), "currency": "USD"}


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S+00:00")


@dataclass
class Record:
    """One resource of a patient record, with the id it will be known by."""

    resource_type: str
    id: str
    resource: dict[str, Any]


class RecordBuilder:
    """Builds one patient record. ``urn`` references (transactions) or ``Type/id`` ones (direct fills)."""

    def __init__(self, rng: random.Random, *, urn: bool = True) -> None:
        self.rng = rng
        self.urn = urn
        self.records: list[Record] = []

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ref(self, record: Record) -> dict[str, str]:
        return {"reference": f"urn:uuid:{record.id}" if self.urn else f"{record.resource_type}/{record.id}"}

    def add(self, resource: dict[str, Any]) -> Record:
        record = Record(resource["resourceType"], self._new_id(), resource)
        self.records.append(record)
        return record

    def patient_record(self, encounters: int) -> list[Record]:
        rng = self.rng
        phone = f"508-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        org = self.add({"resourceType": "Organization", "active": True, "name": f"PCP{rng.randint(1000, 99999)}",
                        "type": [_coding("http://terminology.hl7.org/CodeSystem/organization-type", "prov",
                                         "Healthcare Provider")],
                        "telecom": [{"system": "phone", "value": phone}],
                        "address": [{"line": ["57 E MAIN ST"], "city": rng.choice(CITIES), "state": "MA",
                                     "postalCode": "01581", "country": "US"}]})
        doctor = self.add({"resourceType": "Practitioner", "active": True,
                           "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi",
                                           "value": str(rng.randint(9_000_000_000, 9_999_999_999))}],
                           "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)], "prefix": ["Dr."]}],
                           "gender": rng.choice(["male", "female"])})
        birth = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 6500))
        patient = self.add({
            "resourceType": "Patient",
            "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Generated</div>'},
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                           "valueAddress": {"city": rng.choice(CITIES), "state": "Massachusetts", "country": "US"}}],
            "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": self._new_id()},
                           {"type": _coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR",
                                            "Medical Record Number"),
                            "system": "http://hospital.smarthealthit.org", "value": self._new_id()}],
            "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
            "telecom": [{"system": "phone", "value": f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
                         "use": "home"}],
            "gender": rng.choice(["male", "female"]), "birthDate": birth.date().isoformat(),
            "address": [{"line": [f"{rng.randint(1, 999)} Main Street"], "city": rng.choice(CITIES),
                         "state": "MA", "country": "US"}],
            "maritalStatus": _coding("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "S", "Never Married"),
            "communication": [{"language": _coding("urn:ietf:bcp:47", "en-US", "English")}]})
        start = birth + timedelta(days=30)
        for _ in range(encounters):
            start += timedelta(days=rng.randint(20, 200), minutes=rng.randint(0, 600))
            self.encounter(patient, doctor, org, start)
        return self.records

    def encounter(self, patient: Record, doctor: Record, org: Record, start: datetime) -> None:
        rng = self.rng
        end = start + timedelta(minutes=15 * rng.randint(1, 4))
        code, display = rng.choice(ENCOUNTER_TYPES)
        enc = self.add({"resourceType": "Encounter", "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                        "type": [_coding(SNOMED, code, display)], "subject": self.ref(patient),
                        "participant": [{"individual": self.ref(doctor)}],
                        "period": {"start": _ts(start), "end": _ts(end)}, "serviceProvider": self.ref(org)})
        for loinc, name, unit, low, high in rng.sample(VITALS, rng.randint(2, 4)):
            self.add({"resourceType": "Observation", "status": "final",
                      "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category",
                                           "vital-signs", "vital-signs")],
                      "code": _coding(LOINC, loinc, name), "subject": self.ref(patient), "encounter": self.ref(enc),
                      "effectiveDateTime": _ts(start), "issued": _ts(start).replace("+00:00", ".000+00:00"),
                      "valueQuantity": {"value": round(rng.uniform(low, high), 1), "unit": unit,
                                        "system": "http://unitsofmeasure.org", "code": unit}})
        diagnoses: list[Record] = []
        if rng.random() < 0.5:
            code, display = rng.choice(CONDITIONS)
            diagnoses.append(self.add({
                "resourceType": "Condition",
                "clinicalStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved",
                                          "resolved"),
                "verificationStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                              "confirmed", "confirmed"),
                "code": _coding(SNOMED, code, display), "subject": self.ref(patient), "encounter": self.ref(enc),
                "onsetDateTime": _ts(start), "abatementDateTime": _ts(end + timedelta(days=10)),
                "recordedDate": _ts(start)}))
        claim = self.claim(patient, doctor, org, enc, start, end, diagnoses=diagnoses)
        self.eob(patient, doctor, org, enc, claim, start, end)
        if rng.random() < 0.5:
            self.medication(patient, doctor, org, enc, start)

    def medication(self, patient: Record, doctor: Record, org: Record, enc: Record, start: datetime) -> None:
        rng = self.rng
        code, display = rng.choice(MEDICATIONS)
        med = self.add({"resourceType": "MedicationRequest", "status": "stopped", "intent": "order",
                        "medicationCodeableConcept": _coding(RXNORM, code, display), "subject": self.ref(patient),
                        "encounter": self.ref(enc), "authoredOn": _ts(start), "requester": self.ref(doctor),
                        "dosageInstruction": [{"sequence": 1, "asNeededBoolean": True}]})
        self.claim(patient, doctor, org, enc, start, start, prescription=med)

    def claim(self, patient: Record, doctor: Record, org: Record, enc: Record, start: datetime, end: datetime, *,
              diagnoses: list[Record] | None = None, prescription: Record | None = None) -> Record:
        kind = "pharmacy" if prescription else "institutional"
        claim: dict[str, Any] = {
            "resourceType": "Claim", "status": "active",
            "type": _coding("http://terminology.hl7.org/CodeSystem/claim-type", kind, kind), "use": "claim",
            "patient": self.ref(patient), "billablePeriod": {"start": _ts(start), "end": _ts(end)},
            "created": _ts(end), "provider": self.ref(org),
            "priority": _coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "normal"),
            "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Medicaid"}}],
            "item": [{"sequence": 1, "productOrService": _coding(SNOMED, "185349003", "Encounter for check up"),
                      "encounter": [self.ref(enc)]}],
            "total": _money(self.rng.uniform(50, 900))}
        if prescription is not None:
            claim["prescription"] = self.ref(prescription)
        if diagnoses:
            claim["diagnosis"] = [{"sequence": i + 1, "diagnosisReference": self.ref(d)}
                                  for i, d in enumerate(diagnoses)]
        return self.add(claim)

    def eob(self, patient: Record, doctor: Record, org: Record, enc: Record, claim: Record, start: datetime,
            end: datetime) -> None:
        total = float(claim.resource["total"]["value"])
        self.add({
            "resourceType": "ExplanationOfBenefit", "status": "active",
            "type": claim.resource["type"], "use": "claim", "patient": self.ref(patient),
            "billablePeriod": {"start": _ts(start), "end": _ts(end)}, "created": _ts(end),
            "insurer": {"display": "Medicaid"}, "provider": self.ref(doctor), "claim": self.ref(claim),
            "outcome": "complete",
            "careTeam": [{"sequence": 1, "provider": self.ref(doctor),
                          "role": _coding("http://terminology.hl7.org/CodeSystem/claimcareteamrole", "primary",
                                          "Primary provider")}],
            "insurance": [{"focal": True, "coverage": {"display": "Medicaid"}}],
            "item": [{"sequence": 1, "productOrService": _coding(SNOMED, "185349003", "Encounter for check up"),
                      "servicedPeriod": {"start": _ts(start), "end": _ts(end)}, "encounter": [self.ref(enc)],
                      "adjudication": [{"category": _coding("https://bluebutton.cms.gov/resources/codesystem/adjudication",
                                                            "https://bluebutton.cms.gov/resources/variables/line_bene_pmt_amt",
                                                            "Line Beneficiary Payment Amount"),
                                        "amount": _money(total * 0.2)}]}],
            "total": [{"category": _coding("http://terminology.hl7.org/CodeSystem/adjudication", "submitted",
                                           "Submitted Amount"), "amount": _money(total)}],
            "payment": {"amount": _money(total * 0.8)}})


def transaction(records: list[Record]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"fullUrl": f"urn:uuid:{r.id}", "resource": r.resource,
                       "request": {"method": "POST", "url": r.resource_type}} for r in records]}


def generated_bundle(rng: random.Random, encounters: int | None = None) -> dict[str, Any]:
    """A patient record of our own (about 100 entries, like the Synthea samples)."""
    return transaction(RecordBuilder(rng).patient_record(encounters or rng.randint(10, 16)))


def sized_bundle(rng: random.Random, entries: int) -> dict[str, Any]:
    """A transaction with exactly ``entries`` entries: one patient with as many encounters as fit."""
    builder = RecordBuilder(rng)
    records = builder.patient_record(encounters=max(1, entries // 7))
    while len(records) < entries:
        builder.patient_record(encounters=4)  # another patient to fill up: references stay inside the Bundle
    return transaction(_closed_prefix(records, entries))


def _closed_prefix(records: list[Record], n: int) -> list[Record]:
    """The first ``n`` records minus any whose references point past them, topped up from the rest."""
    kept: list[Record] = []
    ids: set[str] = set()
    for record in records:
        refs = set(re.findall(r"urn:uuid:([0-9a-f-]{36})", orjson.dumps(record.resource).decode()))
        if refs <= ids:
            kept.append(record)
            ids.add(record.id)
        if len(kept) == n:
            break
    return kept


# --- the real Synthea samples ---------------------------------------------------------------------------


@dataclass
class Template:
    """A sample patient Bundle as text with the UUIDs it defines, ready to be re-identified."""

    name: str
    text: str
    ids: frozenset[str]


def sample_templates(shared: Path = SHARED_DIR) -> list[Template]:
    """The patient Bundles among the samples (the hospital and practitioner lists are left out)."""
    out = []
    for path in sorted(shared.glob(SAMPLES_GLOB)):
        bundle = orjson.loads(path.read_bytes())
        entries = bundle.get("entry") or []
        if not any(e.get("resource", {}).get("resourceType") == "Patient" for e in entries):
            continue
        ids = frozenset(m for e in entries for m in UUID_RE.findall(str(e.get("fullUrl", ""))))
        out.append(Template(path.stem, path.read_text(), ids))
    return out


def reidentified(template: Template, rng: random.Random) -> dict[str, Any]:
    """A copy of the sample with fresh UUIDs everywhere, as a transaction, plus medication orders."""
    fresh = {old: str(uuid.UUID(int=rng.getrandbits(128), version=4)) for old in template.ids}
    bundle: dict[str, Any] = orjson.loads(UUID_RE.sub(lambda m: fresh.get(m.group(0), m.group(0)), template.text))
    bundle["type"] = "transaction"
    for entry in bundle["entry"]:
        entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    _add_medications(bundle, rng)
    return bundle


def _add_medications(bundle: dict[str, Any], rng: random.Random) -> None:
    by_type: dict[str, list[Record]] = {}
    for entry in bundle["entry"]:
        res = entry["resource"]
        by_type.setdefault(res["resourceType"], []).append(
            Record(res["resourceType"], entry["fullUrl"].removeprefix("urn:uuid:"), res))
    if not all(by_type.get(t) for t in ("Patient", "Practitioner", "Organization", "Encounter")):
        return
    builder = RecordBuilder(rng)
    for enc in by_type["Encounter"]:
        if rng.random() < 0.5:
            start = datetime.fromisoformat(enc.resource.get("period", {}).get("start", "2020-01-01T00:00:00+00:00"))
            builder.medication(by_type["Patient"][0], by_type["Practitioner"][0], by_type["Organization"][0], enc,
                               start)
    bundle["entry"].extend(transaction(builder.records)["entry"])


def bundle_source(source: str, rng: random.Random) -> tuple[str, list[Template]]:
    """Resolve ``auto`` to ``samples`` when the shared samples exist, else ``generated``."""
    templates = sample_templates() if source in ("auto", "samples") else []
    if source == "samples" and not templates:
        raise SystemExit(f"no Synthea samples under {SHARED_DIR}")
    return ("samples", templates) if templates else ("generated", [])


def make_bundles(source: str, count: int, rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    kind, templates = bundle_source(source, rng)
    if kind == "samples":
        return kind, [reidentified(templates[i % len(templates)], rng) for i in range(count)]
    return kind, [generated_bundle(rng) for _ in range(count)]
