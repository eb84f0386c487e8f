"""Incoming resources are validated as FHIR R4; errors name the element at fault."""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.mark.parametrize(("body", "status", "expression"), [
    ({"resourceType": "Patient", "birthDate": "1990-13-45"}, 400, "Patient.birthDate"),
    ({"resourceType": "Patient", "name": [{"family": 7}]}, 400, "Patient.name[0].family"),
    ({"resourceType": "Patient", "favouriteColour": "blue"}, 400, "Patient.favouriteColour"),
    ({"resourceType": "Observation", "code": {"text": "x"}}, 400, "Observation.status"),
])
def test_invalid_resources_are_rejected_with_the_element(api: LiveServer, body, status, expression) -> None:  # type: ignore[no-untyped-def]
    r = api.http.post(body["resourceType"], json=body, headers=FHIR_JSON)
    assert r.status_code == status
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(expression in issue.get("expression", []) for issue in outcome["issue"]), outcome
    # nothing was written
    assert api.http.get(body["resourceType"]).json()["entry"] == []


def test_not_json_and_not_an_object(api: LiveServer) -> None:
    r = api.http.post("Patient", content=b"{not json", headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "structure"
    r = api.http.post("Patient", json=[1, 2], headers=FHIR_JSON)
    assert r.status_code == 400


def test_type_mismatch_and_unknown_type(api: LiveServer) -> None:
    r = api.http.post("Patient", json={"resourceType": "Observation"}, headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["resourceType"]
    assert api.http.post("Spaceship", json={"resourceType": "Spaceship"}, headers=FHIR_JSON).status_code == 404


def test_r4_types_missing_from_r4b_are_accepted(api: LiveServer) -> None:
    # MedicinalProduct exists in R4 but not in the R4B models: R4's definitions decide.
    r = api.http.post("MedicinalProduct", json={"resourceType": "MedicinalProduct",
                                                "name": [{"productName": "Paracetamol 500"}]}, headers=FHIR_JSON)
    assert r.status_code == 201, r.text


def test_body_too_large(api: LiveServer) -> None:
    limit = api.fhir.settings.max_body_bytes
    r = api.http.post("Patient", content=b" " * (limit + 1), headers=FHIR_JSON)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
