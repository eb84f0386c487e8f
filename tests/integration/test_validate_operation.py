"""$validate through the live server on SQLite and PostgreSQL: base definitions (invariants, references,
extensions) and stored profiles (cardinality, fixed/pattern, slicing, bindings, types, targetProfile)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.integration import validate_profiles as tp


def put(api, resource: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    r = api.http.put(f"{resource['resourceType']}/{resource['id']}", json=resource)
    assert r.status_code in (200, 201), r.text


@pytest.fixture
def profiled(api):  # type: ignore[no-untyped-def]
    for res in [*tp.terminology(), tp.patient_profile(), tp.observation_profile(), tp.bundle_profile()]:
        put(api, res)
    return api


def validate(api, resource: dict[str, Any] | None = None, *, params: dict[str, str] | None = None,  # type: ignore[no-untyped-def]
             path: str | None = None, wrap: bool = False) -> list[dict[str, Any]]:
    where = path or f"{(resource or {}).get('resourceType')}/$validate"
    if resource is None:
        r = api.http.get(where, params=params)
    elif wrap:
        body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": resource}] + [
            {"name": k, "valueString": v} for k, v in (params or {}).items()]}
        r = api.http.post(where, json=body)
    else:
        r = api.http.post(where, json=resource, params=params)
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"]
    return list(outcome["issue"])


def _by_expression(issues: list[dict[str, Any]], severity: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in issues:
        if i["severity"] == severity:
            where = i["expression"][0]
            out[where] = f"{out[where]} | {i['diagnostics']}" if where in out else i["diagnostics"]
    return out


def errors(issues: list[dict[str, Any]]) -> dict[str, str]:
    return _by_expression(issues, "error")


def warnings(issues: list[dict[str, Any]]) -> dict[str, str]:
    return _by_expression(issues, "warning")


NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Rao</div>'}


def test_valid_resource_has_only_information(api) -> None:  # type: ignore[no-untyped-def]
    issues = validate(api, {"resourceType": "Patient", "name": [{"family": "Rao"}], "text": NARRATIVE})
    assert [i["severity"] for i in issues] == ["information"]
    issues = validate(api, {"resourceType": "Patient", "name": [{"family": "Rao"}]})  # dom-6: best practice
    assert [(i["severity"], i["diagnostics"][:15]) for i in issues] == [("warning", "Patient: dom-6:")]


def test_structure_errors_come_first_and_stop_profile_checks(api) -> None:  # type: ignore[no-untyped-def]
    issues = validate(api, {"resourceType": "Patient", "active": "yes"}, wrap=True)
    assert "Patient.active" in errors(issues)
    assert any("not checked" in i["diagnostics"] for i in issues if i["severity"] == "information")


def test_base_invariants(api) -> None:  # type: ignore[no-untyped-def]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "BP"},
           "valueQuantity": {"value": 1}, "dataAbsentReason": {"text": "lost"},
           "effectivePeriod": {"start": "2024-02-01", "end": "2024-01-01"}}
    found = errors(validate(api, obs))
    assert "obs-6" in found["Observation"] and "obs-7" not in found["Observation"]
    assert "per-1" in found["Observation.effective.ofType(Period)"]
    bp = {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}
    same = {"resourceType": "Observation", "status": "final", "code": bp, "valueString": "high",
            "component": [{"code": bp, "valueString": "x"}]}  # a component with the Observation's own code
    assert "obs-7" in errors(validate(api, same))["Observation"]
    contained = {"resourceType": "Patient", "contained": [
        {"resourceType": "Organization", "id": "o1", "name": "x", "meta": {"versionId": "2"}}]}
    found = errors(validate(api, contained))
    assert "dom-4" in found["Patient"] and "dom-3" in found["Patient"]  # versioned and unreferenced contained


def test_reference_target_types(api) -> None:  # type: ignore[no-untyped-def]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Practitioner/1"}, "performer": [{"reference": "Practitioner/1"}]}
    found = errors(validate(api, obs))
    assert set(found) == {"Observation.subject.reference"}
    assert "Practitioner" in found["Observation.subject.reference"]
    obs["subject"] = {"reference": "http://other.example/fhir/Patient/9"}
    assert not errors(validate(api, obs))


def test_extensions_known_and_unknown(api) -> None:  # type: ignore[no-untyped-def]
    known = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
    patient = {"resourceType": "Patient", "extension": [
        {"url": known, "valueAddress": {"city": "Pune"}},
        {"url": "http://example.org/unknown-ext", "valueString": "x"}],
        "_birthDate": {"extension": [{"url": "http://example.org/unknown-2", "valueString": "y"}]},
        "birthDate": "2000-01-01"}
    issues = validate(api, patient)
    assert not errors(issues)
    warned = warnings(issues)
    assert "unknown-ext" in warned["Patient.extension[1]"] and "unknown-2" in warned["Patient.birthDate.extension[0]"]
    patient["extension"][0] = {"url": known, "valueString": "Pune"}  # birthPlace takes an Address
    found = errors(validate(api, patient))
    assert "not allowed" in found["Patient.extension[0].value.ofType(string)"]
    assert "ext-1" in errors(validate(api, {"resourceType": "Patient", "extension": [
        {"url": "http://example.org/e", "valueString": "x", "extension": [{"url": "a", "valueString": "b"}]}]}))[
        "Patient.extension[0]"]


def test_profile_from_meta_passes_and_each_rule_fails(profiled) -> None:  # type: ignore[no-untyped-def]
    good = tp.good_patient()
    assert not errors(validate(profiled, good))
    bad = copy.deepcopy(good)
    bad["identifier"] = [{"system": "http://other/ids", "value": "1"}]  # slice mrn (min 1) missing
    bad["name"] = [{"given": ["A"]}]  # tp-1
    bad["gender"] = "other"  # required binding to male|female
    bad["active"] = False  # fixedBoolean true
    bad["generalPractitioner"] = [{"reference": "Organization/1"}]  # targetProfile Practitioner
    # extensible: a code of another system is a warning
    bad["maritalStatus"] = {"coding": [{"system": "http://other/marital", "code": "W"}]}
    issues = validate(profiled, bad)
    found = errors(issues)
    assert "slice 'mrn'" in found["Patient.identifier"]
    assert "tp-1" in found["Patient.name[0]"]
    assert tp.GENDER_VS in found["Patient.gender"]
    assert "True" in found["Patient.active"]
    assert "Organization" in found["Patient.generalPractitioner[0].reference"]
    assert tp.MARITAL_VS in warnings(issues)["Patient.maritalStatus"]
    # ... but a code the value set's own system (included whole) does not have is an error
    bad["maritalStatus"] = {"coding": [{"system": tp.MARITAL_CS, "code": "W"}]}
    assert "not a code of its system" in errors(validate(profiled, bad))["Patient.maritalStatus"]
    del bad["name"]
    assert "minimum cardinality" in errors(validate(profiled, bad))["Patient.name"]


def test_pattern_type_restriction_and_closed_slicing(profiled) -> None:  # type: ignore[no-untyped-def]
    good = tp.good_observation()
    assert not errors(validate(profiled, good))
    bad = copy.deepcopy(good)
    bad["category"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory"}]}]
    bad["valueString"] = "high"
    bad["component"][0]["code"]["coding"][0]["code"] = "8462-4"  # diastolic: no slice for it, slicing closed
    found = errors(validate(profiled, bad))
    assert "match" in found["Observation.category[0]"]
    assert "Quantity" in found["Observation.value.ofType(string)"]
    assert "closed" in found["Observation.component[0]"]
    assert "slice 'systolic'" in found["Observation.component"]
    del bad["component"]
    assert "minimum cardinality" in errors(validate(profiled, bad))["Observation.component"]


def test_bundle_profile_slices_entries_by_profile(profiled) -> None:  # type: ignore[no-untyped-def]
    bundle = {"resourceType": "Bundle", "meta": {"profile": [tp.BUNDLE]}, "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:7f0c5e0a-3b1e-4b55-8d3a-000000000001", "resource": tp.good_patient()},
        {"fullUrl": "urn:uuid:7f0c5e0a-3b1e-4b55-8d3a-000000000002", "resource": tp.good_observation()}]}
    assert not errors(validate(profiled, bundle))
    broken = copy.deepcopy(bundle)
    broken["entry"][0]["resource"]["gender"] = "unknown"  # the entry is validated against its slice's profile
    broken["entry"].append({"resource": {"resourceType": "Practitioner"}})  # no slice: closed
    found = errors(validate(profiled, broken))
    assert tp.GENDER_VS in found["Bundle.entry[0].resource.gender"]
    assert "closed" in found["Bundle.entry[2]"]
    broken["entry"] = broken["entry"][1:]
    assert "slice 'patient'" in errors(validate(profiled, broken))["Bundle.entry"]
    # references inside a Bundle resolve through fullUrl
    bundle["entry"][1]["resource"]["subject"] = {"reference": "urn:uuid:7f0c5e0a-3b1e-4b55-8d3a-000000000002"}
    assert "Observation" in errors(validate(profiled, bundle))["Bundle.entry[1].resource.subject.reference"]


def test_profile_parameter_instance_level_and_modes(profiled) -> None:  # type: ignore[no-untyped-def]
    plain = {"resourceType": "Patient", "id": "p2", "name": [{"family": "Iyer"}], "gender": "male"}
    put(profiled, plain)
    assert not errors(validate(profiled, path="Patient/p2/$validate"))
    found = errors(validate(profiled, path="Patient/p2/$validate", params={"profile": tp.PATIENT}))
    assert "slice 'mrn'" in found["Patient.identifier"]
    found = errors(validate(profiled, plain, wrap=True, params={"profile": tp.PATIENT, "mode": "create"}))
    assert "Patient.identifier" in found
    unknown = errors(validate(profiled, plain, params={"profile": "http://example.org/nope"}))
    assert "not known" in unknown["Patient"]
    no_id = {k: v for k, v in plain.items() if k != "id"}
    assert "id" in errors(validate(profiled, no_id, params={"mode": "update"}))
    other = errors(validate(profiled, {**plain, "id": "zz"}, path="Patient/p2/$validate", params={"mode": "update"}))
    assert "zz" in other["id"]
    assert [i["severity"] for i in validate(profiled, path="Patient/p2/$validate", params={"mode": "delete"})] == [
        "information"]
    missing = profiled.http.get("Patient/nope/$validate", params={"mode": "delete"})
    assert missing.status_code == 404
    bad_mode = profiled.http.post("Patient/$validate", json=plain, params={"mode": "merge"})
    assert bad_mode.status_code == 400 and bad_mode.json()["issue"][0]["expression"] == ["mode"]
    nothing = profiled.http.get("Patient/$validate")
    assert nothing.status_code == 400 and nothing.json()["issue"][0]["expression"] == ["resource"]
    # a meta.profile the server lacks is a warning for $validate (an explicit profile parameter is an error)
    unknown_meta = {**plain, "meta": {"profile": ["http://example.org/nope"]}}
    issues = validate(profiled, unknown_meta)
    assert not errors(issues) and "not known" in warnings(issues)["Patient"]


def test_updated_profile_is_recompiled(profiled) -> None:  # type: ignore[no-untyped-def]
    good = tp.good_patient()
    assert not errors(validate(profiled, good))
    changed = tp.patient_profile()
    for el in changed["snapshot"]["element"]:
        if el["id"] == "Patient.birthDate":
            el["min"] = 1
    put(profiled, changed)
    assert "Patient.birthDate" in errors(validate(profiled, good))


def test_capability_statement_lists_installed_profiles(profiled) -> None:  # type: ignore[no-untyped-def]
    cs = profiled.http.get("metadata").json()
    by_type = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert by_type["Patient"]["supportedProfile"] == [tp.PATIENT]
    assert by_type["Observation"]["supportedProfile"] == [tp.OBSERVATION]
    assert "supportedProfile" not in by_type["Encounter"]
    assert any(op["name"] == "validate" for op in by_type["Encounter"]["operation"])


def test_ucum_code_must_be_a_ucum_expression(api) -> None:  # type: ignore[no-untyped-def]
    def quantity(code: str, unit: str = "whatever") -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
                "valueQuantity": {"value": 5.4, "unit": unit, "system": "http://unitsofmeasure.org", "code": code}}

    bad = [i for i in validate(api, quantity("blorbs")) if i["severity"] == "error"]
    assert [i["expression"] for i in bad] == [["Observation.value.ofType(Quantity).code"]]
    assert "blorbs" in bad[0]["diagnostics"] and "UCUM" in bad[0]["diagnostics"]
    for good in ("mmol/L", "mg/dL", "10*3/uL", "mm[Hg]", "{beats}/min"):
        assert not [i for i in validate(api, quantity(good)) if i["severity"] == "error"], good
    # Another system's code is not UCUM's business; the unit text is free.
    other = quantity("blorbs") | {"valueQuantity": {"value": 1, "system": "http://example.org/units", "code": "blorbs"}}
    assert not [i for i in validate(api, other) if i["severity"] == "error"]
    # Age, Duration and the rest are Quantities too.
    age = {"resourceType": "Condition", "subject": {"reference": "Patient/x"}, "onsetAge": {
        "value": 3, "system": "http://unitsofmeasure.org", "code": "yearz"}}
    assert any(i["expression"] == ["Condition.onset.ofType(Age).code"] for i in validate(api, age)
               if i["severity"] == "error")
