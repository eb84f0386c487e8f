"""The core's vital-signs profiles through the validation package (what workflows/clinic relies on): known by
URL, bp's component slices matched by the values fixed on their nested coding slices, vs-1 on the value of
effectiveDateTime; and UCUM conversion with offset units."""

from __future__ import annotations

from typing import Any

from fhir_server.search.ucum import convert
from fhir_server.validation.service import validate_profiles

BP = "http://hl7.org/fhir/StructureDefinition/bp"
VITAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}


def _component(code: str, value: float) -> dict[str, Any]:
    return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}


def _bp(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "category": [VITAL],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/1"}, "effectiveDateTime": "2026-01-01",
            "component": [_component("8480-6", 120), _component("8462-4", 80)], **extra}


def _errors(resource: dict[str, Any], profile: str = BP) -> list[str]:
    return [i.diagnostics for i in validate_profiles(None, resource, [profile]) if i.severity == "error"]


def test_a_conforming_blood_pressure_has_no_errors() -> None:
    assert _errors(_bp()) == []


def test_a_blood_pressure_without_its_diastolic_is_refused_by_slice() -> None:
    errors = _errors(_bp(component=[_component("8480-6", 120), _component("1234-5", 80)]))
    assert any("DiastolicBP" in e for e in errors) and not any("SystolicBP" in e for e in errors), errors


def test_a_component_in_the_wrong_unit_is_named() -> None:
    wrong = _component("8480-6", 120)
    wrong["valueQuantity"]["code"] = "kPa"
    errors = _errors(_bp(component=[wrong, _component("8462-4", 80)]))
    assert any("component[0]" in e and "mm[Hg]" in e for e in errors), errors


def test_vs_1_tests_the_value_of_effective_date_time() -> None:
    assert any("vs-1" in e for e in _errors(_bp(effectiveDateTime="2026")))
    assert not any("vs-1" in e for e in _errors(_bp(effectiveDateTime="2026-01-01T10:00:00Z")))


def test_ucum_conversion_includes_offset_units() -> None:
    assert convert(98.6, "[degF]", "Cel") == 37.0
    assert convert(170, "cm", "m") == 1.7
    assert convert(80, "{beats}/min", "/min") == 80.0
    assert convert(5, "kg", "m") is None
    assert convert(1, "not-a-unit", "m") is None
