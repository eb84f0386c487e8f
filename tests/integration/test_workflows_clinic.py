"""The consultation's rules (FHIR_WORKFLOWS=clinic; docs/workflows/clinic.md), through HTTP with a doctor's
token, on both databases: vital signs (profiles, plausibility after UCUM conversion, interpretation, BMI),
signed and amended clinical notes, problems and allergies coded against their bound value sets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from terminology.core import core_resources
from tests.conftest import Backend
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
VITAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
UNIT_SETS = ("bodytemp", "vitals-common", "bodyweight", "bodylength")
REPLACED_AS = "https://fhir-server.dev/StructureDefinition/replaced-as"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, workflows="clinic")


@pytest.fixture(scope="module")
def clinic(smart: Smart) -> dict[str, Any]:
    smart.backend.truncate()
    pid = _admin(smart, {"resourceType": "Patient", "name": [{"family": "Sharma", "given": ["Asha"]}]})["id"]
    doc = _admin(smart, {"resourceType": "Practitioner", "name": [{"family": "Rao"}]})["id"]
    _admin(smart, {"resourceType": "CodeSystem", "url": ICD10, "status": "active", "content": "fragment",
                   "concept": [{"code": "J45", "display": "Asthma",
                                "concept": [{"code": "J45.0", "display": "Predominantly allergic asthma"}]},
                               {"code": "I10", "display": "Essential (primary) hypertension"}]})
    for vs in core_resources([f"http://hl7.org/fhir/ValueSet/ucum-{n}" for n in UNIT_SETS]):
        _admin(smart, vs)  # the vital-signs profiles' unit bindings (what `terminology load-core` stores)
    token = str(_user_token(smart, "doctor", "user/*.cruds", fhir_user=f"Practitioner/{doc}")["access_token"])
    return {"patient": pid, "doctor": doc, "token": token}


def _admin(smart: Smart, resource: dict[str, Any]) -> dict[str, Any]:
    r = smart.as_admin("POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _call(smart: Smart, c: dict[str, Any], method: str, path: str, body: Any = None,
          content_type: str = "application/fhir+json") -> httpx.Response:
    kw: dict[str, Any] = {}
    if body is not None:
        kw = {"content": orjson.dumps(body), "headers": {"Content-Type": content_type}}
    return smart.fhir(method, path, c["token"], **kw)


def _rule(r: httpx.Response, status: int, code: str, expression: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    issues = r.json()["issue"]
    assert code in [c["code"] for i in issues for c in (i.get("details") or {}).get("coding", [])], r.text
    if expression is not None:
        assert any(expression in i.get("expression", []) for i in issues), r.text
    return dict(r.json())


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def vital(c: dict[str, Any], code: str, value: float | None = None, unit: str | None = None, *,
          day: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Observation", "status": "final", "category": [VITAL],
                           "code": {"coding": [{"system": LOINC, "code": code}]},
                           "subject": {"reference": f"Patient/{c['patient']}"},
                           "effectiveDateTime": f"{day or _today()}T09:30:00Z"}
    if value is not None:
        out["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    return {**out, **extra}


def bp(c: dict[str, Any], systolic: float, diastolic: float) -> dict[str, Any]:
    return vital(c, "85354-9", component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}])


def _interp(holder: dict[str, Any]) -> str:
    return str(holder["interpretation"][0]["coding"][0]["code"])


# --- item 8: vital signs ------------------------------------------------------------------------------------

def test_vital_signs_conform_to_their_profiles_and_are_interpreted(smart: Smart, clinic: dict[str, Any]) -> None:
    r = _call(smart, clinic, "POST", "Observation", vital(clinic, "8867-4", 120, "/min"))
    assert r.status_code == 201, r.text
    assert "http://hl7.org/fhir/StructureDefinition/heartrate" in r.json()["meta"]["profile"]
    assert _interp(r.json()) == "H"
    r = _call(smart, clinic, "POST", "Observation", vital(clinic, "8310-5", 98.6, "[degF]"))  # 37 Cel
    assert r.status_code == 201, r.text
    assert _interp(r.json()) == "N"
    r = _call(smart, clinic, "POST", "Observation", vital(clinic, "2708-6", 88, "%"))
    assert r.status_code == 201 and _interp(r.json()) == "LL", r.text
    r = _call(smart, clinic, "POST", "Observation", vital(clinic, "9279-1", 10, "/min"))
    assert r.status_code == 201 and _interp(r.json()) == "L", r.text
    r = _call(smart, clinic, "POST", "Observation", bp(clinic, 150, 80))
    assert r.status_code == 201, r.text
    assert [_interp(comp) for comp in r.json()["component"]] == ["H", "N"]
    # the Observation's own reference range wins over the defaults
    ranged = vital(clinic, "8867-4", 110, "/min", referenceRange=[{"high": {"value": 120, "unit": "/min",
                                                                            "system": UCUM, "code": "/min"}}])
    r = _call(smart, clinic, "POST", "Observation", ranged)
    assert r.status_code == 201 and _interp(r.json()) == "N", r.text
    # an interpretation the writer gave is kept
    given = vital(clinic, "8867-4", 120, "/min", interpretation=[{"text": "tachycardia after exercise"}])
    r = _call(smart, clinic, "POST", "Observation", given)
    assert r.status_code == 201 and r.json()["interpretation"] == [{"text": "tachycardia after exercise"}]


def test_a_vital_sign_that_breaks_its_profile_is_refused(smart: Smart, clinic: dict[str, Any]) -> None:
    no_subject = vital(clinic, "8867-4", 80, "/min")
    del no_subject["subject"]
    _rule(_call(smart, clinic, "POST", "Observation", no_subject), 422, "clinic-vital-profile")
    one_arm = bp(clinic, 120, 80)
    del one_arm["component"][1]
    _rule(_call(smart, clinic, "POST", "Observation", one_arm), 422, "clinic-vital-profile", "Observation.component")
    # a body temperature in a unit its profile does not allow, though convertible: the profile says no
    kelvin = vital(clinic, "8310-5", 310, "K")
    _rule(_call(smart, clinic, "POST", "Observation", kelvin), 422, "clinic-vital-profile")


def test_implausible_vital_signs_are_refused_naming_the_element(smart: Smart, clinic: dict[str, Any]) -> None:
    r = _call(smart, clinic, "POST", "Observation", vital(clinic, "8310-5", 110, "[degF]"))  # 43.33 Cel
    _rule(r, 422, "clinic-vital-implausible", "Observation.valueQuantity.value")
    assert _call(smart, clinic, "POST", "Observation", vital(clinic, "8310-5", 43.3, "Cel")).status_code == 201
    _rule(_call(smart, clinic, "POST", "Observation", vital(clinic, "8310-5", 34.9, "Cel")), 422,
          "clinic-vital-implausible")
    _rule(_call(smart, clinic, "POST", "Observation", vital(clinic, "8867-4", 39, "/min")), 422,
          "clinic-vital-implausible", "Observation.valueQuantity.value")
    _rule(_call(smart, clinic, "POST", "Observation", vital(clinic, "8867-4", 201, "/min")), 422,
          "clinic-vital-implausible")
    _rule(_call(smart, clinic, "POST", "Observation", vital(clinic, "2708-6", 69, "%")), 422,
          "clinic-vital-implausible")
    r = _call(smart, clinic, "POST", "Observation", bp(clinic, 80, 120))
    _rule(r, 422, "clinic-vital-bp-order", "Observation.component[1].valueQuantity.value")
    _rule(_call(smart, clinic, "POST", "Observation", vital(clinic, "8867-4", 80, "kg")), 422,
          "clinic-vital-unit", "Observation.valueQuantity.code")
    # an update is held to the same limits; an entered-in-error reading is not checked again
    ok = _call(smart, clinic, "POST", "Observation", vital(clinic, "8867-4", 72, "/min")).json()
    r = _call(smart, clinic, "PUT", f"Observation/{ok['id']}", {**ok, "valueQuantity": {**ok["valueQuantity"],
                                                                                         "value": 20}})
    _rule(r, 422, "clinic-vital-implausible")
    wrong = {**ok, "status": "entered-in-error", "valueQuantity": {**ok["valueQuantity"], "value": 20}}
    assert _call(smart, clinic, "PUT", f"Observation/{ok['id']}", wrong).status_code == 200


def _bmis(smart: Smart, c: dict[str, Any], observation_id: str) -> list[dict[str, Any]]:
    r = _call(smart, c, "GET", f"Observation?derived-from=Observation/{observation_id}&code={LOINC}|39156-5")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_bmi_is_derived_from_a_same_day_height_and_weight(smart: Smart, clinic: dict[str, Any]) -> None:
    pid = _admin(smart, {"resourceType": "Patient", "name": [{"family": "Kumar"}]})["id"]
    c = {**clinic, "patient": pid}
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    old_weight = _call(smart, c, "POST", "Observation", vital(c, "29463-7", 90, "kg", day=yesterday)).json()
    height = _call(smart, c, "POST", "Observation", vital(c, "8302-2", 170, "cm")).json()
    assert _bmis(smart, c, height["id"]) == []  # yesterday's weight does not count
    assert _bmis(smart, c, old_weight["id"]) == []
    weight = _call(smart, c, "POST", "Observation", vital(c, "29463-7", 158.73, "[lb_av]"))  # 72 kg
    assert weight.status_code == 201, weight.text
    [bmi] = _bmis(smart, c, weight.json()["id"])
    assert bmi["valueQuantity"] == {"value": 24.9, "unit": "kg/m2", "system": UCUM, "code": "kg/m2"}
    assert {d["reference"] for d in bmi["derivedFrom"]} == {f"Observation/{height['id']}",
                                                            f"Observation/{weight.json()['id']}"}
    assert "http://hl7.org/fhir/StructureDefinition/bmi" in bmi["meta"]["profile"]
    assert _interp(bmi) == "N"
    # a corrected weight: the same BMI follows it
    w = weight.json()
    fixed = {**w, "valueQuantity": {"value": 90, "unit": "kg", "system": UCUM, "code": "kg"}}
    assert _call(smart, c, "PUT", f"Observation/{w['id']}", fixed).status_code == 200
    [again] = _bmis(smart, c, w["id"])
    assert again["id"] == bmi["id"] and again["valueQuantity"]["value"] == 31.1 and _interp(again) == "H"


def test_a_transaction_with_height_and_weight_stores_their_bmi(smart: Smart, clinic: dict[str, Any]) -> None:
    pid = _admin(smart, {"resourceType": "Patient", "name": [{"family": "Das"}]})["id"]
    c = {**clinic, "patient": pid}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{n}", "resource": body, "request": {"method": "POST", "url": "Observation"}}
        for n, body in (("a1", vital(c, "8302-2", 70, "[in_i]")), ("a2", vital(c, "29463-7", 70, "kg")))]}
    r = _call(smart, c, "POST", "", bundle)
    assert r.status_code == 200, r.text
    weight_id = r.json()["entry"][1]["response"]["location"].split("/")[1]
    [bmi] = _bmis(smart, c, weight_id)
    assert bmi["valueQuantity"]["value"] == 22.1  # 70 kg / 1.778 m squared


def test_a_height_and_a_weight_written_at_once_make_one_bmi(smart: Smart, clinic: dict[str, Any]) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("SQLite serialises writers; the advisory lock is PostgreSQL's to prove")
    pid = _admin(smart, {"resourceType": "Patient", "name": [{"family": "Iyer"}]})["id"]
    c = {**clinic, "patient": pid}
    bodies = [vital(c, "8302-2", 160, "cm"), vital(c, "29463-7", 64, "kg")]
    barrier = threading.Barrier(2)
    ids: list[str] = []

    def write(body: dict[str, Any]) -> None:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            r = http.post(f"{smart.base}/Observation", content=orjson.dumps(body),
                          headers={**JSON, "Authorization": f"Bearer {c['token']}"})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

    threads = [threading.Thread(target=write, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 2
    found = [b for i in ids for b in _bmis(smart, c, i)]
    assert len({b["id"] for b in found}) == 1 and found[0]["valueQuantity"]["value"] == 25.0, found


# --- item 9: clinical notes -------------------------------------------------------------------------------

def note(c: dict[str, Any], *, signed: bool, date: datetime | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Composition", "status": "final" if signed else "preliminary",
        "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": f"Patient/{c['patient']}"},
        "date": (date or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "author": [{"reference": f"Practitioner/{c['doctor']}"}], "title": "OPD consultation",
        "section": [{"title": "Assessment", "text": {"status": "generated",
                                                     "div": '<div xmlns="http://www.w3.org/1999/xhtml">Wheeze</div>'}}]}
    if signed:
        doctor = {"reference": f"Practitioner/{c['doctor']}"}
        out["attester"] = [{"mode": "legal", "time": out["date"], "party": doctor}]
    return {**out, **extra}


def test_a_signed_note_is_immutable(smart: Smart, clinic: dict[str, Any]) -> None:
    draft = _call(smart, clinic, "POST", "Composition", note(clinic, signed=False)).json()
    r = _call(smart, clinic, "PUT", f"Composition/{draft['id']}", {**draft, "title": "OPD consultation, asthma"})
    assert r.status_code == 200, r.text
    signing = {**r.json(), "status": "final", "attester": note(clinic, signed=True)["attester"]}
    signed = _call(smart, clinic, "PUT", f"Composition/{draft['id']}", signing)
    assert signed.status_code == 200, signed.text
    s = signed.json()
    _rule(_call(smart, clinic, "PUT", f"Composition/{s['id']}", {**s, "title": "changed"}), 409,
          "clinic-note-signed", "Composition.status")
    patch = [{"op": "replace", "path": "/title", "value": "changed"}]
    _rule(_call(smart, clinic, "PATCH", f"Composition/{s['id']}", patch, "application/json-patch+json"), 409,
          "clinic-note-signed")
    _rule(_call(smart, clinic, "DELETE", f"Composition/{s['id']}"), 409, "clinic-note-signed")
    assert _call(smart, clinic, "GET", f"Composition/{s['id']}").json()["title"] == "OPD consultation, asthma"
    # only an amendment marks a note amended or entered-in-error
    other = _call(smart, clinic, "POST", "Composition", note(clinic, signed=False)).json()
    _rule(_call(smart, clinic, "PUT", f"Composition/{other['id']}", {**other, "status": "entered-in-error"}), 422,
          "clinic-note-status-by-amendment", "Composition.status")


def _provenance_for(smart: Smart, c: dict[str, Any], composition_id: str) -> list[dict[str, Any]]:
    r = _call(smart, c, "GET", f"Provenance?target=Composition/{composition_id}")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_amendments_replace_or_append_with_provenance(smart: Smart, clinic: dict[str, Any]) -> None:
    first = _call(smart, clinic, "POST", "Composition", note(clinic, signed=True)).json()
    addendum = note(clinic, signed=True, title="Addendum", relatesTo=[
        {"code": "appends", "targetReference": {"reference": f"Composition/{first['id']}"}}])
    r = _call(smart, clinic, "POST", "Composition", addendum)
    assert r.status_code == 201, r.text
    assert _call(smart, clinic, "GET", f"Composition/{first['id']}").json()["status"] == "final"
    [prov] = _provenance_for(smart, clinic, r.json()["id"])
    assert prov["activity"]["coding"][0]["code"] == "APPEND"
    assert prov["agent"][0]["who"] == {"reference": f"Practitioner/{clinic['doctor']}"}
    assert prov["entity"][0]["what"]["reference"] == f"Composition/{first['id']}/_history/1"

    amendment = note(clinic, signed=True, title="Corrected", relatesTo=[
        {"code": "replaces", "targetReference": {"reference": f"Composition/{first['id']}"}}])
    r = _call(smart, clinic, "POST", "Composition", amendment)
    assert r.status_code == 201, r.text
    old = _call(smart, clinic, "GET", f"Composition/{first['id']}").json()
    assert old["status"] == "amended" and old["meta"]["versionId"] == "2"
    [prov] = _provenance_for(smart, clinic, r.json()["id"])
    assert prov["activity"]["coding"][0]["code"] == "UPDATE"
    assert {t["reference"] for t in prov["target"]} == {f"Composition/{r.json()['id']}/_history/1",
                                                        f"Composition/{first['id']}/_history/2"}
    # a replaced note is replaced once; a note of another patient is no amendment of it
    _rule(_call(smart, clinic, "POST", "Composition", amendment), 409, "clinic-note-already-replaced",
          "Composition.relatesTo[0].targetReference")
    stranger = _admin(smart, {"resourceType": "Patient", "name": [{"family": "Other"}]})["id"]
    second = _call(smart, clinic, "POST", "Composition", note(clinic, signed=True)).json()
    wrong = note({**clinic, "patient": stranger}, signed=True, relatesTo=[
        {"code": "replaces", "targetReference": {"reference": f"Composition/{second['id']}"}}])
    _rule(_call(smart, clinic, "POST", "Composition", wrong), 422, "clinic-amend-subject")
    _rule(_call(smart, clinic, "POST", "Composition", note(clinic, signed=True, relatesTo=[
        {"code": "replaces", "targetReference": {"reference": "Composition/nope"}}])), 422, "clinic-amend-target")
    # entered in error: said on the relation
    void = note(clinic, signed=True, title="Wrong patient", relatesTo=[
        {"code": "replaces", "targetReference": {"reference": f"Composition/{second['id']}"},
         "extension": [{"url": REPLACED_AS, "valueCode": "entered-in-error"}]}])
    r = _call(smart, clinic, "POST", "Composition", void)
    assert r.status_code == 201, r.text
    assert _call(smart, clinic, "GET", f"Composition/{second['id']}").json()["status"] == "entered-in-error"


def test_an_unsigned_note_is_editable_for_24_hours(smart: Smart, clinic: dict[str, Any]) -> None:
    recent = _call(smart, clinic, "POST", "Composition",
                   note(clinic, signed=False, date=datetime.now(UTC) - timedelta(hours=23))).json()
    assert _call(smart, clinic, "PUT", f"Composition/{recent['id']}", {**recent, "title": "x"}).status_code == 200
    stale = _call(smart, clinic, "POST", "Composition",
                  note(clinic, signed=False, date=datetime.now(UTC) - timedelta(hours=25))).json()
    _rule(_call(smart, clinic, "PUT", f"Composition/{stale['id']}", {**stale, "title": "x"}), 409,
          "clinic-note-edit-window", "Composition.date")
    _rule(_call(smart, clinic, "DELETE", f"Composition/{stale['id']}"), 409, "clinic-note-edit-window")
    late_signature = {**stale, "status": "final", "attester": note(clinic, signed=True)["attester"]}
    assert _call(smart, clinic, "PUT", f"Composition/{stale['id']}", late_signature).status_code == 200


def test_a_signed_scanned_document_is_superseded_only_by_a_replacement(smart: Smart, clinic: dict[str, Any]) -> None:
    def scan(**extra: Any) -> dict[str, Any]:
        return {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
                "subject": {"reference": f"Patient/{clinic['patient']}"},
                "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "authenticator": {"reference": f"Practitioner/{clinic['doctor']}"},
                "content": [{"attachment": {"contentType": "application/pdf", "url": "https://dms.example/scan/1"}}],
                **extra}
    first = _call(smart, clinic, "POST", "DocumentReference", scan()).json()
    _rule(_call(smart, clinic, "PUT", f"DocumentReference/{first['id']}", {**first, "status": "superseded"}), 409,
          "clinic-note-signed")
    r = _call(smart, clinic, "POST", "DocumentReference", scan(relatesTo=[
        {"code": "replaces", "target": {"reference": f"DocumentReference/{first['id']}"}}]))
    assert r.status_code == 201, r.text
    assert _call(smart, clinic, "GET", f"DocumentReference/{first['id']}").json()["status"] == "superseded"


def test_concurrent_amendments_of_one_note_yield_one(smart: Smart, clinic: dict[str, Any]) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("SQLite serialises writers; the row lock is PostgreSQL's to prove")
    target = _call(smart, clinic, "POST", "Composition", note(clinic, signed=True)).json()
    body = note(clinic, signed=True, relatesTo=[
        {"code": "replaces", "targetReference": {"reference": f"Composition/{target['id']}"}}])
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def amend() -> None:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            r = http.post(f"{smart.base}/Composition", content=orjson.dumps(body),
                          headers={**JSON, "Authorization": f"Bearer {clinic['token']}"})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=amend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [409] * 7, statuses
    assert len(_provenance_for(smart, clinic, target["id"])) == 1


# --- item 10: coded problems, diagnoses and allergies --------------------------------------------------------

def condition(c: dict[str, Any], code: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": {"reference": f"Patient/{c['patient']}"}, "code": code,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}]}


def test_diagnoses_are_coded_from_the_bound_value_set(smart: Smart, clinic: dict[str, Any]) -> None:
    r = _call(smart, clinic, "POST", "Condition", condition(clinic, {"coding": [{"system": ICD10, "code": "J45.0"}]}))
    assert r.status_code == 201, r.text
    _rule(_call(smart, clinic, "POST", "Condition", condition(clinic, {"coding": [{"system": ICD10, "code": "X99"}]})),
          422, "clinic-code-not-in-value-set", "Condition.code.coding[0]")
    other = {"coding": [{"system": ICD10, "code": "I10"}, {"system": "http://example.org/local", "code": "HT"}]}
    _rule(_call(smart, clinic, "POST", "Condition", condition(clinic, other)), 422,
          "clinic-code-unsupported-system", "Condition.code.coding[1]")
    # ICD-10 is imported here, so a diagnosis is coded, not text only; SNOMED CT is not imported
    _rule(_call(smart, clinic, "POST", "Condition", condition(clinic, {"text": "wheeze"})), 422,
          "clinic-code-required", "Condition.code")
    _rule(_call(smart, clinic, "POST", "Condition", condition(clinic, {"coding": [{"system": SNOMED,
                                                                                  "code": "195967001"}]})),
          422, "clinic-code-unsupported-system", "Condition.code.coding[0]")


def test_allergies_are_text_until_snomed_is_imported(smart: Smart, clinic: dict[str, Any]) -> None:
    def allergy(code: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{clinic['patient']}"},
                "code": code, **extra}
    ibuprofen = {"coding": [{"system": SNOMED, "code": "387207008"}]}
    assert _call(smart, clinic, "POST", "AllergyIntolerance", allergy({"text": "ibuprofen"})).status_code == 201
    _rule(_call(smart, clinic, "POST", "AllergyIntolerance", allergy(ibuprofen)), 422,
          "clinic-code-unsupported-system", "AllergyIntolerance.code.coding[0]")
    sct = _admin(smart, {"resourceType": "CodeSystem", "url": SNOMED, "version": "test", "status": "active",
                         "content": "fragment", "hierarchyMeaning": "is-a", "concept": [
                             {"code": "105590001", "display": "Substance",
                              "concept": [{"code": "387207008", "display": "Ibuprofen"}]},
                             {"code": "404684003", "display": "Clinical finding",
                              "concept": [{"code": "271807003", "display": "Eruption of skin"}]}]})
    try:
        rash = {"coding": [{"system": SNOMED, "code": "271807003"}]}
        r = _call(smart, clinic, "POST", "AllergyIntolerance", allergy(ibuprofen, reaction=[{"manifestation": [rash]}]))
        assert r.status_code == 201, r.text
        _rule(_call(smart, clinic, "POST", "AllergyIntolerance", allergy(rash)), 422,
              "clinic-code-not-in-value-set", "AllergyIntolerance.code.coding[0]")
        _rule(_call(smart, clinic, "POST", "AllergyIntolerance",
                    allergy(ibuprofen, reaction=[{"manifestation": [rash, ibuprofen]}])), 422,
              "clinic-code-not-in-value-set", "AllergyIntolerance.reaction[0].manifestation[1].coding[0]")
        _rule(_call(smart, clinic, "POST", "AllergyIntolerance", allergy({"text": "ibuprofen"})), 422,
              "clinic-code-required")
    finally:
        assert smart.as_admin("DELETE", f"CodeSystem/{sct['id']}").status_code in (200, 204)
