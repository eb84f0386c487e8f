"""System-level and compartment search reached over HTTP (search.html#all, compartmentdefinition.html)."""

from __future__ import annotations

from tests.conftest import LiveServer

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _seed(api: LiveServer) -> None:
    for pid in ("a", "b"):
        api.http.put(f"Patient/{pid}", json={"resourceType": "Patient", "id": pid, "gender": "female"},
                     headers=FHIR_JSON)
        api.http.post("Observation", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                           "subject": {"reference": f"Patient/{pid}"}}, headers=FHIR_JSON)
    api.http.post("Encounter", json={"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                                     "subject": {"reference": "Patient/a"}}, headers=FHIR_JSON)


def test_system_search(api: LiveServer) -> None:
    _seed(api)
    r = api.http.get("", params={"_type": "Patient,Encounter"})
    assert r.status_code == 200, r.text
    types = sorted(e["resource"]["resourceType"] for e in r.json()["entry"] if e["search"]["mode"] == "match")
    assert types == ["Encounter", "Patient", "Patient"]
    posted = api.http.post("_search", data={"_type": "Observation"})
    assert posted.status_code == 200
    assert len([e for e in posted.json()["entry"] if e["search"]["mode"] == "match"]) == 2


def test_compartment_search(api: LiveServer) -> None:
    _seed(api)
    r = api.http.get("Patient/a/Observation")
    assert r.status_code == 200, r.text
    refs = [e["resource"]["subject"]["reference"] for e in r.json()["entry"] if e["search"]["mode"] == "match"]
    assert refs == ["Patient/a"]
    assert len(api.http.post("Patient/b/Observation/_search", data={}).json()["entry"]) == 1
    assert api.http.get("Patient/a/NotAType").status_code == 404
