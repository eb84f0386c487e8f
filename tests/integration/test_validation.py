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
    ({"resourceType": "Patient", "active": "yes"}, 400, "Patient.active"),
    ({"resourceType": "Patient", "gender": "x"}, 400, "Patient.gender"),
    ({"resourceType": "Patient", "name": {"family": "x"}}, 400, "Patient.name"),
    ({"resourceType": "Patient", "contained": [{"id": "o1"}]}, 400, "Patient.contained[0]"),
    ({"resourceType": "MedicinalProduct", "name": [{"productName": "x"}], "brand": "y"}, 400,
     "MedicinalProduct.brand"),
    ({"resourceType": "PlanDefinition", "status": "draft", "subjectCanonical": "http://x"}, 400,
     "PlanDefinition.subjectCanonical"),
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


def test_every_problem_is_reported(api: LiveServer) -> None:
    body = {"resourceType": "Patient", "active": "yes", "gender": "x", "birthDate": "1990-02-30", "foo": 1}
    r = api.http.post("Patient", json=body, headers=FHIR_JSON)
    assert r.status_code == 400
    found = {(i["code"], i["expression"][0]) for i in r.json()["issue"]}
    assert found == {("value", "Patient.active"), ("code-invalid", "Patient.gender"),
                     ("value", "Patient.birthDate"), ("structure", "Patient.foo")}


def test_update_id_must_match_the_url(api: LiveServer) -> None:
    r = api.http.put("Patient/p1", json={"resourceType": "Patient", "id": "p2"}, headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Patient.id"]
    r = api.http.put("Patient/p1", json={"resourceType": "Patient", "id": "p1", "active": "yes"}, headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Patient.active"]
    assert api.http.get("Patient/p1").status_code == 404


def test_r4_content_that_r4b_rejects_is_accepted(api: LiveServer) -> None:
    # Extension.valueMeta exists in R4 but not in R4B; R4's definitions decide.
    body = {"resourceType": "Patient", "extension": [{"url": "http://example.org/x", "valueMeta": {"source": "a"}}]}
    r = api.http.post("Patient", json=body, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
