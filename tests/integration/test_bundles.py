"""Batch and transaction Bundles (http.html#transaction): atomicity, urn:uuid and conditional references,
processing order, If-None-Exist in entries, independent batch entries."""

from __future__ import annotations

import glob
import os
from typing import Any

import orjson
import pytest

from tests.conftest import TENANT_BACKENDS, LiveServer

# Also in a non-default tenant: its own schema, through /fhir/{tenant} (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)

FHIR_JSON = {"Content-Type": "application/fhir+json"}
SYNTHEA = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "../../../shared/samples/synthea/*/*/"
                                                                     "original_fhir_json/*.json")))


def bundle(btype: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": btype, "entry": list(entries)}


def post(full_url: str, resource: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"], **request}}


def count(api: LiveServer, rtype: str) -> int:
    return len(api.http.get(rtype, params={"_count": 1000}).json()["entry"])


def test_transaction_resolves_urn_uuid_references(api: LiveServer) -> None:
    tx = bundle("transaction",
                post("urn:uuid:0b6f6a4e-0000-4000-8000-000000000002", {
                    "resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
                    "subject": {"reference": "urn:uuid:0b6f6a4e-0000-4000-8000-000000000001"}}),
                post("urn:uuid:0b6f6a4e-0000-4000-8000-000000000001", {
                    "resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "77"}]}))
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    obs_loc, pat_loc = (e["response"]["location"] for e in out["entry"])
    assert pat_loc.startswith("Patient/") and obs_loc.startswith("Observation/")
    obs = api.http.get(obs_loc.split("/_history")[0]).json()
    assert obs["subject"]["reference"] == pat_loc.split("/_history")[0]


def test_transaction_is_all_or_nothing(api: LiveServer) -> None:
    tx = bundle("transaction",
                post("urn:uuid:1", {"resourceType": "Patient"}),
                post("urn:uuid:2", {"resourceType": "Observation", "code": {"text": "no status"}}))
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert "Bundle.entry[1]" in issue["diagnostics"]
    assert "Observation.status" in issue["expression"]
    assert count(api, "Patient") == 0  # the valid first entry was rolled back too


def test_transaction_failing_if_match_rolls_back(api: LiveServer) -> None:
    api.http.put("Patient/t1", json={"resourceType": "Patient", "id": "t1"}, headers=FHIR_JSON)
    tx = bundle("transaction",
                {"resource": {"resourceType": "Patient", "id": "t2"},
                 "request": {"method": "PUT", "url": "Patient/t2"}},
                {"resource": {"resourceType": "Patient", "id": "t1", "gender": "male"},
                 "request": {"method": "PUT", "url": "Patient/t1", "ifMatch": 'W/"9"'}})
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 412
    assert api.http.get("Patient/t2").status_code == 404


def test_processing_order_delete_before_post_before_put_before_get(api: LiveServer) -> None:
    api.http.put("Patient/old", json={"resourceType": "Patient", "id": "old"}, headers=FHIR_JSON)
    tx = bundle("transaction",
                {"request": {"method": "GET", "url": "Patient/new"}},
                {"resource": {"resourceType": "Patient", "id": "new", "gender": "other"},
                 "request": {"method": "PUT", "url": "Patient/new"}},
                {"request": {"method": "DELETE", "url": "Patient/old"}})
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["resource"]["gender"] == "other"  # the GET ran after the PUT
    assert entries[2]["response"]["status"] == "204 No Content"
    assert api.http.get("Patient/old").status_code == 410


def test_if_none_exist_in_entries_and_conditional_references(api: LiveServer) -> None:
    existing = api.http.post("Patient", json={"resourceType": "Patient",
                                              "identifier": [{"system": "urn:mrn", "value": "500"}]},
                             headers=FHIR_JSON).json()
    tx = bundle("transaction",
                post("urn:uuid:p", {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "500"}]},
                     ifNoneExist="identifier=urn:mrn|500"),
                post("urn:uuid:e1", {"resourceType": "Encounter", "status": "finished",
                                     "class": {"code": "AMB"}, "subject": {"reference": "urn:uuid:p"}}),
                post("urn:uuid:e2", {"resourceType": "Encounter", "status": "finished",
                                     "class": {"code": "AMB"},
                                     "subject": {"reference": "Patient?identifier=urn:mrn|500"}}))
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert count(api, "Patient") == 1
    for e in entries[1:]:
        enc = api.http.get(e["response"]["location"].split("/_history")[0]).json()
        assert enc["subject"]["reference"] == f"Patient/{existing['id']}"


def test_unresolvable_references_fail_the_transaction(api: LiveServer) -> None:
    tx = bundle("transaction", post("urn:uuid:x", {"resourceType": "Encounter", "status": "planned",
                                                   "class": {"code": "AMB"},
                                                   "subject": {"reference": "Patient?identifier=urn:mrn|nobody"}}))
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 404 and "Bundle.entry[0]" in r.json()["issue"][0]["diagnostics"]
    tx = bundle("transaction", post("urn:uuid:y", {"resourceType": "Encounter", "status": "planned",
                                                   "class": {"code": "AMB"},
                                                   "subject": {"reference": "urn:uuid:missing"}}))
    assert api.http.post("", json=tx, headers=FHIR_JSON).status_code == 400
    assert count(api, "Encounter") == 0


def test_conditional_update_in_transaction(api: LiveServer) -> None:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "cu"}]}
    tx = bundle("transaction", {"fullUrl": "urn:uuid:c", "resource": body,
                                "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|cu"}})
    first = api.http.post("", json=tx, headers=FHIR_JSON).json()["entry"][0]["response"]
    second = api.http.post("", json=tx, headers=FHIR_JSON).json()["entry"][0]["response"]
    assert first["status"] == "201 Created" and second["status"] == "200 OK"
    assert first["location"].split("/_history")[0] == second["location"].split("/_history")[0]
    assert count(api, "Patient") == 1


def test_batch_entries_succeed_or_fail_independently(api: LiveServer) -> None:
    b = bundle("batch",
               post("urn:uuid:a", {"resourceType": "Patient", "gender": "female"}),
               post("urn:uuid:b", {"resourceType": "Patient", "gender": "not-a-bool", "active": []}),
               {"request": {"method": "GET", "url": "Patient/nope"}},
               {"request": {"method": "DELETE", "url": "Patient/nope"}})
    r = api.http.post("", json=b, headers=FHIR_JSON)
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1].startswith("400") and statuses[2].startswith("404") and statuses[3].startswith("404")
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert count(api, "Patient") == 1


def test_bundle_shape_errors(api: LiveServer) -> None:
    assert api.http.post("", json={"resourceType": "Patient"}, headers=FHIR_JSON).status_code == 400
    r = api.http.post("", json=bundle("collection"), headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.type"]
    r = api.http.post("", json=bundle("transaction", {"request": {"method": "FETCH", "url": "Patient"}}),
                      headers=FHIR_JSON)
    assert r.status_code == 400 and "Bundle.entry[0].request.method" in r.json()["issue"][0]["expression"]
    r = api.http.post("", json=bundle("transaction", {"request": {"method": "POST", "url": "Patient"}}),
                      headers=FHIR_JSON)
    assert r.status_code == 400


@pytest.mark.skipif(not SYNTHEA, reason="shared/samples/synthea is not beside the checkout")
def test_synthea_patient_bundle_loads_in_one_transaction(api: LiveServer) -> None:
    from fhir_server.loader import as_transaction

    path = max(SYNTHEA, key=os.path.getsize)
    with open(path, "rb") as fh:
        doc = orjson.loads(fh.read())
    tx = as_transaction([(e["resource"], e.get("fullUrl")) for e in doc["entry"]])
    # make it a 500-entry bundle: repeat the clinical part with fresh urn:uuids
    entries = list(tx["entry"])
    n = 0
    while len(entries) < 500:
        for e in tx["entry"][1:]:
            if len(entries) >= 500:
                break
            if e["resource"]["resourceType"] in ("Observation", "Condition", "Immunization"):
                n += 1
                entries.append({**e, "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}"})
    tx["entry"] = entries
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 200, r.text[:2000]
    assert len(r.json()["entry"]) == 500
    assert all(e["response"]["status"] in ("201 Created", "200 OK") for e in r.json()["entry"])
    patient_id = r.json()["entry"][0]["response"]["location"].split("/")[1]
    obs = next(e for e in r.json()["entry"] if e["response"]["location"].startswith("Observation/"))
    got = api.http.get(obs["response"]["location"].split("/_history")[0]).json()
    assert got["subject"]["reference"] == f"Patient/{patient_id}"


def test_transaction_may_not_change_one_resource_twice(api: LiveServer) -> None:
    tx = bundle("transaction",
                {"resource": {"resourceType": "Patient", "id": "dup"},
                 "request": {"method": "PUT", "url": "Patient/dup"}},
                {"request": {"method": "DELETE", "url": "Patient/dup"}})
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert api.http.get("Patient/dup").status_code == 404


def test_fullurls_are_rewritten_in_uris_and_narrative(api: LiveServer) -> None:
    div = ('<div xmlns="http://www.w3.org/1999/xhtml">'
           '<a href="urn:uuid:aa000000-0000-4000-8000-000000000001">p</a></div>')
    tx = bundle("transaction",
                post("urn:uuid:aa000000-0000-4000-8000-000000000001", {"resourceType": "Patient"}),
                post("urn:uuid:aa000000-0000-4000-8000-000000000002", {
                    "resourceType": "Provenance", "recorded": "2026-01-01T00:00:00Z",
                    "text": {"status": "generated", "div": div},
                    "policy": ["urn:uuid:aa000000-0000-4000-8000-000000000001"],
                    "target": [{"reference": "urn:uuid:aa000000-0000-4000-8000-000000000001"}],
                    "agent": [{"who": {"display": "urn:uuid:not-an-entry"}}]}),
                {"fullUrl": "http://example.org/fhir/Patient/abs", "resource": {"resourceType": "Patient", "id": "abs"},
                 "request": {"method": "PUT", "url": "Patient/abs"}},
                post("urn:uuid:aa000000-0000-4000-8000-000000000003", {
                    "resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "subject": {"reference": "http://example.org/fhir/Patient/abs"}}))
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    locs = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]
    prov = api.http.get(locs[1]).json()
    assert prov["target"][0]["reference"] == locs[0]
    assert prov["policy"] == [locs[0]]
    assert f'href="{locs[0]}"' in prov["text"]["div"]
    assert prov["agent"][0]["who"]["display"] == "urn:uuid:not-an-entry"  # not a reference: left alone
    assert api.http.get(locs[3]).json()["subject"]["reference"] == "Patient/abs"


def test_a_failing_conditional_entry_is_named(api: LiveServer) -> None:
    for _ in range(2):
        api.http.post("Patient", json={"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "2x"}]},
                      headers=FHIR_JSON)
    tx = bundle("transaction", post("urn:uuid:ok", {"resourceType": "Patient"}),
                post("urn:uuid:p", {"resourceType": "Patient"}, ifNoneExist="identifier=urn:mrn|2x"))
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 412 and "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
