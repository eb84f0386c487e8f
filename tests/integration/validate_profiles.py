"""Test profiles for the $validate tests, derived from the official R4 snapshots (never hand-typed whole):
copy the core snapshot, change some elements, insert slices."""

from __future__ import annotations

import copy
from typing import Any

from fhir_server.definitions import resource_structure_definitions

BASE = "http://example.org/fhir"
PATIENT = f"{BASE}/StructureDefinition/test-patient"
OBSERVATION = f"{BASE}/StructureDefinition/test-bp"
BUNDLE = f"{BASE}/StructureDefinition/test-bundle"
MARITAL_CS = f"{BASE}/CodeSystem/test-marital"
MARITAL_VS = f"{BASE}/ValueSet/test-marital"
GENDER_VS = f"{BASE}/ValueSet/test-genders"
MRN = "http://hospital.example/mrn"
LOINC = "http://loinc.org"


def derive(type_name: str, url: str, edits: dict[str, dict[str, Any]],
           slices: dict[str, list[dict[str, Any]]] | None = None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile of ``type_name``: ``edits`` merged into elements by id, ``slices`` (new elements) inserted
    after the element with that id and everything below it."""
    core = resource_structure_definitions()[type_name]
    elements = copy.deepcopy(core["snapshot"]["element"])
    for el in elements:
        if el["id"] in edits:
            el.update(edits[el["id"]])
    elements = [el for el in elements if el["id"] not in drop]
    for after, new in (slices or {}).items():
        last = max(i for i, el in enumerate(elements) if el["id"] == after or el["id"].startswith(after + "."))
        elements[last + 1:last + 1] = new
    name = url.rsplit("/", 1)[-1]
    title = "".join(part.capitalize() for part in name.split("-"))
    return {"resourceType": "StructureDefinition", "id": name, "url": url, "version": "1.0.0", "name": title,
            "status": "active", "kind": "resource", "abstract": False, "type": type_name,
            "baseDefinition": core["url"], "derivation": "constraint", "fhirVersion": "4.0.1",
            "snapshot": {"element": elements}}


def element(id_: str, **fields: Any) -> dict[str, Any]:
    path = ".".join(part.split(":", 1)[0] for part in id_.split("."))
    out = {"id": id_, "path": path, "short": id_, "definition": f"{id_} (a test slice)", "min": 0, "max": "1",
           "base": {"path": path, "min": 0, "max": "*"}}
    if ":" in id_.rsplit(".", 1)[-1]:
        out["sliceName"] = id_.rsplit(":", 1)[-1]
    out.update(fields)
    return out


def patient_profile() -> dict[str, Any]:
    return derive("Patient", PATIENT, {
        "Patient.identifier": {"min": 1, "slicing": {"discriminator": [{"type": "value", "path": "system"}],
                                                     "rules": "open"}},
        "Patient.name": {"min": 1, "constraint": [{"key": "tp-1", "severity": "error",
                                                   "human": "A name needs a family name",
                                                   "expression": "family.exists()"}]},
        "Patient.gender": {"min": 1, "binding": {"strength": "required", "valueSet": GENDER_VS}},
        "Patient.maritalStatus": {"binding": {"strength": "extensible", "valueSet": MARITAL_VS}},
        "Patient.generalPractitioner": {"type": [{"code": "Reference", "targetProfile": [
            "http://hl7.org/fhir/StructureDefinition/Practitioner"]}]},
        "Patient.active": {"fixedBoolean": True},
        "Patient.extension": {"slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}},
    }, slices={
        "Patient.identifier": [
            element("Patient.identifier:mrn", min=1, max="1", type=[{"code": "Identifier"}]),
            element("Patient.identifier:mrn.system", min=1, type=[{"code": "uri"}], fixedUri=MRN),
        ],
        "Patient.extension": [
            element("Patient.extension:birthPlace", max="1", type=[{"code": "Extension", "profile": [
                "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"]}]),
        ],
    })


def observation_profile() -> dict[str, Any]:
    systolic = {"coding": [{"system": LOINC, "code": "8480-6"}]}
    return derive("Observation", OBSERVATION, {
        "Observation.category": {"min": 1, "patternCodeableConcept": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}},
        "Observation.value[x]": {"type": [{"code": "Quantity"}]},
        "Observation.component": {"min": 1, "slicing": {"discriminator": [{"type": "pattern", "path": "code"}],
                                                        "rules": "closed"}},
    }, slices={
        "Observation.component": [
            element("Observation.component:systolic", min=1, max="1", type=[{"code": "BackboneElement"}]),
            element("Observation.component:systolic.code", min=1, type=[{"code": "CodeableConcept"}],
                    patternCodeableConcept=systolic),
            element("Observation.component:systolic.value[x]", min=1, type=[{"code": "Quantity"}]),
        ],
    })


def bundle_profile() -> dict[str, Any]:
    return derive("Bundle", BUNDLE, {
        "Bundle.type": {"fixedCode": "collection"},
        "Bundle.entry": {"min": 1, "slicing": {"discriminator": [{"type": "profile", "path": "resource"}],
                                               "rules": "closed"}},
    }, slices={
        "Bundle.entry": [
            element("Bundle.entry:patient", min=1, max="1", type=[{"code": "BackboneElement"}]),
            element("Bundle.entry:patient.resource", min=1, type=[{"code": "Patient", "profile": [PATIENT]}]),
            element("Bundle.entry:observation", max="*", type=[{"code": "BackboneElement"}]),
            element("Bundle.entry:observation.resource", min=1, type=[{"code": "Observation",
                                                                       "profile": [OBSERVATION]}]),
        ],
    })


def terminology() -> list[dict[str, Any]]:
    return [
        {"resourceType": "CodeSystem", "id": "test-marital", "url": MARITAL_CS, "status": "active",
         "content": "complete", "concept": [{"code": "M", "display": "Married"}, {"code": "S", "display": "Single"}]},
        {"resourceType": "ValueSet", "id": "test-marital", "url": MARITAL_VS, "status": "active",
         "compose": {"include": [{"system": MARITAL_CS}]}},
        {"resourceType": "ValueSet", "id": "test-genders", "url": GENDER_VS, "status": "active",
         "compose": {"include": [{"system": "http://hl7.org/fhir/administrative-gender",
                                  "concept": [{"code": "male"}, {"code": "female"}]}]}},
    ]


def good_patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "meta": {"profile": [PATIENT]}, "active": True,
            "identifier": [{"system": MRN, "value": "12345"}], "name": [{"family": "Sharma", "given": ["Asha"]}],
            "gender": "female", "maritalStatus": {"coding": [{"system": MARITAL_CS, "code": "M"}]},
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                           "valueAddress": {"city": "Pune"}}]}


def good_observation() -> dict[str, Any]:
    return {"resourceType": "Observation", "meta": {"profile": [OBSERVATION]}, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-05-01T10:00:00+05:30",
            "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                           "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                                             "code": "mm[Hg]"}}]}


REFERRING = f"{BASE}/StructureDefinition/test-referring"


def referring_profile() -> dict[str, Any]:
    """An Observation whose subject must be a test-patient (a targetProfile that is not a core definition)."""
    return derive("Observation", REFERRING, {
        "Observation.subject": {"min": 1, "type": [{"code": "Reference", "targetProfile": [PATIENT]}]},
    })


DOCUMENT = f"{BASE}/StructureDefinition/test-document"


def document_profile(kind: str = "profile") -> dict[str, Any]:
    """A Composition whose section entries are sliced by what they resolve to (``resolve()``), closed: one
    test-patient, any number of Observations."""
    return derive("Composition", DOCUMENT, {
        "Composition.section": {"min": 1},
        "Composition.section.entry": {"min": 1, "slicing": {
            "discriminator": [{"type": kind, "path": "resolve()"}], "rules": "closed"}},
    }, slices={
        "Composition.section.entry": [
            element("Composition.section.entry:patient", min=1, max="1",
                    type=[{"code": "Reference", "targetProfile": [PATIENT]}]),
            element("Composition.section.entry:observation", max="*", type=[{"code": "Reference", "targetProfile": [
                "http://hl7.org/fhir/StructureDefinition/Observation"]}]),
        ],
    })


OBSERVATIONS = f"{BASE}/StructureDefinition/test-observations"


def observations_bundle_profile() -> dict[str, Any]:
    """A Bundle of Observations sliced by profile, two slices of the same type: test-bp and test-referring."""
    return derive("Bundle", OBSERVATIONS, {
        "Bundle.entry": {"slicing": {"discriminator": [{"type": "profile", "path": "resource"}], "rules": "closed"}},
    }, slices={
        "Bundle.entry": [
            element("Bundle.entry:bp", max="*", type=[{"code": "BackboneElement"}]),
            element("Bundle.entry:bp.resource", min=1, type=[{"code": "Observation", "profile": [OBSERVATION]}]),
            element("Bundle.entry:referring", max="*", type=[{"code": "BackboneElement"}]),
            element("Bundle.entry:referring.resource", min=1, type=[{"code": "Observation", "profile": [REFERRING]}]),
        ],
    })
