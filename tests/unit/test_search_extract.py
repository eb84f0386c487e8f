"""Index extraction: registry from the R4 definitions, compiled expressions, rows by value shape."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_server.search.extract import Extractor, parse_reference
from fhir_server.search.paths import compile_expression
from fhir_server.search.registry import core_registry, split_union
from fhir_server.search.values import date_range, normalize

REG = core_registry()
EX = Extractor(REG, "http://ours/fhir")


def rows(resource: dict, kind: str, param: str) -> list[dict]:
    out = EX.extract(resource["resourceType"], "1", resource).rows.get(kind, [])
    return [r for r in out if r["param"] == param]


def test_registry_covers_all_core_parameters() -> None:
    assert sum(len(p) for p in REG.by_type.values()) > 2000  # ~1,400 definitions, many with several bases
    obs = REG.params("Observation")
    assert obs["patient"].expression == "Observation.subject.where(resolve() is Patient)"
    assert obs["code"].type == "token" and obs["_tag"].expression == "Observation.meta.tag"
    assert REG.get("Patient", "_lastUpdated") is not None and not REG.get("Patient", "_lastUpdated").indexed
    # a multi-base parameter keeps only its own type's part
    assert REG.get("Condition", "patient").expression == "Condition.subject.where(resolve() is Patient)"


def test_split_union_respects_parentheses_and_quotes() -> None:
    assert split_union("(A.b as C) | A.d.where(e='x|y') | A.f") == ["(A.b as C)", "A.d.where(e='x|y')", "A.f"]


def test_compiled_expressions_choice_cast_resolve() -> None:
    obs = {"resourceType": "Observation", "valueQuantity": {"value": 5}, "effectivePeriod": {"start": "2020"},
           "subject": {"reference": "Patient/1"}}
    assert compile_expression("(Observation.value as Quantity)", "Observation")(obs) == [{"value": 5}]
    assert compile_expression("(Observation.value as string)", "Observation")(obs) == []
    assert compile_expression("Observation.effective", "Observation")(obs) == [{"start": "2020"}]
    assert compile_expression("Observation.subject.where(resolve() is Patient)", "Observation")(obs)
    assert not compile_expression("Observation.subject.where(resolve() is Group)", "Observation")(obs)
    patient = {"resourceType": "Patient", "deceasedBoolean": True}  # falls back to fhirpathpy
    assert compile_expression("Patient.deceased.exists() and Patient.deceased != false", "Patient")(patient) == [True]


def test_token_rows() -> None:
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5", "display": "Glucose"}],
                    "text": "Blood sugar"}}
    code = rows(obs, "token", "code")
    assert {(r["system"], r["code"]) for r in code} == {("http://loinc.org", "1234-5"), (None, None)}
    assert {r["text_norm"] for r in code} == {"glucose", "blood sugar"}
    assert rows(obs, "token", "status")[0]["code"] == "final"
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "7", "type": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "telecom": [{"system": "email", "value": "a@b.c"}], "active": True}
    assert rows(patient, "token", "identifier")[0]["code"] == "7"
    assert rows(patient, "token", "identifier:of-type")[0]["code"] == "MR|7"
    assert rows(patient, "token", "email")[0]["code"] == "a@b.c"
    assert rows(patient, "token", "active")[0]["code"] == "true"


def test_string_date_quantity_reference_rows() -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "Chloé", "given": ["Ann", "Marie"]}],
               "birthDate": "1980-02"}
    assert {r["value_norm"] for r in rows(patient, "string", "name")} == {"chloe", "ann", "marie"}
    (bd,) = rows(patient, "date", "birthdate")
    assert bd["low"] == datetime(1980, 2, 1, tzinfo=UTC) and bd["high"].day == 29
    obs = {"resourceType": "Observation", "subject": {"reference": "http://ours/fhir/Patient/p1"},
           "performer": [{"reference": "http://else/fhir/Practitioner/9"}, {"identifier": {"value": "x"}}],
           "valueQuantity": {"value": 5.5, "system": "http://unitsofmeasure.org", "code": "mg", "unit": "mg"},
           "effectivePeriod": {"start": "2020-01-01T10:00:00+02:00"}}
    assert rows(obs, "reference", "patient")[0] | {} == {"resource_type": "Observation", "resource_id": "1",
                                                         "param": "patient", "target_type": "Patient",
                                                         "target_id": "p1", "target_url": None}
    perf = rows(obs, "reference", "performer")
    assert perf[0]["target_url"] == "http://else/fhir/Practitioner/9"
    assert rows(obs, "token", "performer:identifier")[0]["code"] == "x"
    (q,) = rows(obs, "quantity", "value-quantity")
    assert (q["value"], q["code"]) == (5.5, "mg")
    (d,) = rows(obs, "date", "date")
    assert d["low"] == datetime(2020, 1, 1, 8, tzinfo=UTC) and d["high"].year == 9999


def test_values() -> None:
    assert normalize("ÅNGSTRÖM") == "angstrom"
    low, high = date_range("2013-01-14T10:00")  # type: ignore[misc]
    assert (high - low).total_seconds() < 60 and low.minute == 0
    assert date_range("2013-13") is None and date_range("nonsense") is None
    assert parse_reference("Patient/1/_history/2") == ("Patient", "1", None)
    assert parse_reference("123") == (None, "123", None)
    assert parse_reference("#contained") is None
