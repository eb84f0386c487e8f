"""Conditional create, update, delete and patch (http.html#ccreate, #cond-update, #cdelete)."""

from __future__ import annotations

import pytest

from tests.conftest import TENANT_BACKENDS, LiveServer

# Also in a non-default tenant: its own schema, through /fhir/{tenant} (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def with_mrn(value: str, **extra: object) -> dict[str, object]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": value}], **extra}


def test_conditional_create(api: LiveServer) -> None:
    headers = {**FHIR_JSON, "If-None-Exist": "identifier=urn:mrn|1"}
    first = api.http.post("Patient", json=with_mrn("1"), headers=headers)
    assert first.status_code == 201
    second = api.http.post("Patient", json=with_mrn("1", gender="male"), headers=headers)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"] and "gender" not in second.json()
    api.http.post("Patient", json=with_mrn("1"), headers=FHIR_JSON)  # now two match
    several = api.http.post("Patient", json=with_mrn("1"), headers=headers)
    assert several.status_code == 412


def test_conditional_create_by_id_and_bad_criteria(api: LiveServer) -> None:
    api.http.put("Patient/x1", json={"resourceType": "Patient", "id": "x1"}, headers=FHIR_JSON)
    r = api.http.post("Patient", json={"resourceType": "Patient"}, headers={**FHIR_JSON, "If-None-Exist": "_id=x1"})
    assert r.status_code == 200 and r.json()["id"] == "x1"
    empty = api.http.post("Patient", json={"resourceType": "Patient"}, headers={**FHIR_JSON, "If-None-Exist": ""})
    assert empty.status_code == 201  # an empty header is no condition


def test_identifier_token_forms(api: LiveServer) -> None:
    api.http.post("Patient", json=with_mrn("tok"), headers=FHIR_JSON)
    api.http.post("Patient", json={"resourceType": "Patient", "identifier": [{"value": "tok"}]}, headers=FHIR_JSON)
    assert len(api.http.get("Patient", params={"identifier": "urn:mrn|tok"}).json()["entry"]) == 1
    assert len(api.http.get("Patient", params={"identifier": "tok"}).json()["entry"]) == 2
    assert len(api.http.get("Patient", params={"identifier": "|tok"}).json()["entry"]) == 1
    assert len(api.http.get("Patient", params={"identifier": "urn:mrn|"}).json()["entry"]) == 1
    assert len(api.http.get("Patient", params={"identifier": "urn:other|tok"}).json()["entry"]) == 0


def test_conditional_update(api: LiveServer) -> None:
    created = api.http.put("Patient", params={"identifier": "urn:mrn|2"}, json=with_mrn("2"), headers=FHIR_JSON)
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = api.http.put("Patient", params={"identifier": "urn:mrn|2"}, json=with_mrn("2", gender="female"),
                           headers=FHIR_JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == pid and updated.json()["meta"]["versionId"] == "2"
    wrong_id = api.http.put("Patient", params={"identifier": "urn:mrn|2"}, json=with_mrn("2", id="other"),
                            headers=FHIR_JSON)
    assert wrong_id.status_code == 400
    client_id = api.http.put("Patient", params={"identifier": "urn:mrn|3"}, json=with_mrn("3", id="mine"),
                             headers=FHIR_JSON)
    assert client_id.status_code == 201 and client_id.json()["id"] == "mine"
    api.http.post("Patient", json=with_mrn("2"), headers=FHIR_JSON)
    several = api.http.put("Patient", params={"identifier": "urn:mrn|2"}, json=with_mrn("2"), headers=FHIR_JSON)
    assert several.status_code == 412


def test_conditional_delete(api: LiveServer) -> None:
    pid = api.http.post("Patient", json=with_mrn("4"), headers=FHIR_JSON).json()["id"]
    assert api.http.delete("Patient", params={"identifier": "urn:mrn|4"}).status_code == 204
    assert api.http.get(f"Patient/{pid}").status_code == 410
    nothing = api.http.delete("Patient", params={"identifier": "urn:mrn|4"})
    assert nothing.status_code == 204
    api.http.post("Patient", json=with_mrn("5"), headers=FHIR_JSON)
    api.http.post("Patient", json=with_mrn("5"), headers=FHIR_JSON)
    assert api.http.delete("Patient", params={"identifier": "urn:mrn|5"}).status_code == 412
    assert api.http.delete("Patient").status_code == 400  # no criteria: never "delete everything"


def test_conditional_patch(api: LiveServer) -> None:
    pid = api.http.post("Patient", json=with_mrn("6"), headers=FHIR_JSON).json()["id"]
    ops = [{"op": "add", "path": "/gender", "value": "female"}]
    r = api.http.patch("Patient", params={"identifier": "urn:mrn|6"}, json=ops,
                       headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["gender"] == "female"
