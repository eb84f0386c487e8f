"""Bulk Data $export on the embedded default (jobs on the server's own threads), both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from sqlalchemy import update

from fhir_server.jobs.tables import BULK_JOB
from tests.conftest import TENANT_BACKENDS, LiveServer
from tests.integration.bulk_support import ASYNC, download, export, kick_off, poll
from tests.integration.search_support import post

# Also in a non-default tenant: its own schema, through /fhir/{tenant} (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)


def obs(pid: str | None, code: str = "a") -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                           "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}
    if pid:
        out["subject"] = {"reference": f"Patient/{pid}"}
    return out


def ids(found: dict[str, list[dict[str, Any]]], rtype: str) -> set[str]:
    return {r["id"] for r in found.get(rtype, [])}


def test_kick_off_needs_prefer_and_valid_parameters(api: LiveServer) -> None:
    resp = api.http.get("$export")
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["Prefer"]
    for query, name in [("_outputFormat=text/csv", "_outputFormat"), ("_type=Nope", "_type"),
                        ("_since=yesterday", "_since"), ("_typeFilter=Observation?nope=1", "_typeFilter"),
                        ("_elements=id", "_elements")]:
        resp = api.http.get(f"$export?{query}", headers=ASYNC)
        assert resp.status_code == 400, query
        assert resp.json()["issue"][0]["expression"] == [name], resp.text
    assert api.http.get("Group/$export", headers=ASYNC).status_code == 400
    assert api.http.get("Group/nope/$export", headers=ASYNC).status_code == 404


def test_system_export_manifest_and_files(api: LiveServer) -> None:
    pids = [post(api, {"resourceType": "Patient", "gender": "female"}) for _ in range(3)]
    oids = [post(api, obs(p)) for p in pids]
    status_url = kick_off(api.http, "$export?_outputFormat=application/fhir%2Bndjson")
    manifest = poll(api.http, status_url).json()
    assert manifest["requiresAccessToken"] is False
    assert manifest["request"].endswith("/$export?_outputFormat=application/fhir%2Bndjson")
    assert datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00")) <= datetime.now(UTC)
    assert manifest["error"] == []
    assert sorted(o["type"] for o in manifest["output"]) == ["Observation", "Patient"]
    found = download(api.http, manifest)
    assert ids(found, "Patient") == set(pids) and ids(found, "Observation") == set(oids)
    assert found["Patient"][0]["resourceType"] == "Patient" and found["Patient"][0]["meta"]["versionId"] == "1"
    # The same job answers again; a cancelled (deleted) one is gone.
    assert api.http.get(status_url).status_code == 200
    assert api.http.delete(status_url).status_code == 202
    assert api.http.get(status_url).status_code == 404
    assert api.http.get(manifest["output"][0]["url"]).status_code == 404


def test_type_since_and_type_filter(api: LiveServer) -> None:
    pid = post(api, {"resourceType": "Patient"})
    early = post(api, obs(pid, "early"))
    since = api.http.get(f"Observation/{early}").json()["meta"]["lastUpdated"]
    late_a = post(api, obs(pid, "a"))
    late_b = post(api, obs(pid, "b"))
    api.http.put(f"Patient/{pid}", json={"resourceType": "Patient", "id": pid, "gender": "male"})
    found = export(api.http, "$export?_type=Observation")
    assert set(found) == {"Observation"} and ids(found, "Observation") == {early, late_a, late_b}
    found = export(api.http, f"$export?_since={since.replace('+', '%2B')}")
    assert ids(found, "Observation") == {late_a, late_b} and ids(found, "Patient") == {pid}
    found = export(api.http, "$export?_type=Observation,Patient"
                             "&_typeFilter=Observation%3Fcode%3Dhttp://loinc.org%7Cb"
                             "&_typeFilter=Observation%3Fcode%3Dearly")
    assert ids(found, "Observation") == {late_b, early} and ids(found, "Patient") == {pid}
    found = export(api.http, "$export?_typeFilter=Patient%3Fgender%3Dfemale")
    assert ids(found, "Patient") == set() and ids(found, "Observation") == {early, late_a, late_b}


def test_patient_and_group_exports_follow_the_compartment(api: LiveServer) -> None:
    a, b, c = (post(api, {"resourceType": "Patient"}) for _ in range(3))
    oa, ob, oc = post(api, obs(a)), post(api, obs(b)), post(api, obs(c))
    loose = post(api, obs(None))  # in no patient's compartment
    org = post(api, {"resourceType": "Organization", "name": "Lab"})
    found = export(api.http, "Patient/$export")
    assert ids(found, "Patient") == {a, b, c} and ids(found, "Observation") == {oa, ob, oc}
    assert loose not in ids(found, "Observation") and "Organization" not in found and org
    group = post(api, {"resourceType": "Group", "type": "person", "actual": True,
                       "member": [{"entity": {"reference": f"Patient/{a}"}},
                                  {"entity": {"reference": f"Patient/{b}"}}]})
    found = export(api.http, f"Group/{group}/$export")
    assert ids(found, "Patient") == {a, b} and ids(found, "Observation") == {oa, ob}
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{b}"}},
        {"name": "_type", "valueString": "Observation"}]}
    found = export(api.http, f"Group/{group}/$export", json=params)
    assert set(found) == {"Observation"} and ids(found, "Observation") == {ob}
    resp = api.http.get("Patient/$export?_type=Organization", headers=ASYNC)
    assert resp.status_code == 400  # Organization is not in the Patient compartment


def test_large_type_is_split_into_files(api: LiveServer) -> None:
    for _ in range(5):
        post(api, {"resourceType": "Patient"})
    original = api.fhir.settings
    api.fhir.settings = original.model_copy(update={"bulk_file_resources": 2, "bulk_page_size": 3})
    try:
        resp = poll(api.http, kick_off(api.http, "$export?_type=Patient"))
    finally:
        api.fhir.settings = original
    manifest = resp.json()
    assert [o["count"] for o in manifest["output"]] == [2, 2, 1]
    assert len(ids(download(api.http, manifest), "Patient")) == 5


def test_files_expire(api: LiveServer) -> None:
    post(api, {"resourceType": "Patient"})
    status_url = kick_off(api.http, "$export")
    resp = poll(api.http, status_url)
    expires = parsedate_to_datetime(resp.headers["Expires"])
    ahead = (expires - datetime.now(UTC)).total_seconds()
    assert abs(ahead - api.fhir.settings.bulk_expiry_seconds) < 120
    file_url = resp.json()["output"][0]["url"]
    assert api.http.get(file_url).status_code == 200
    with api.backend.engine.begin() as conn:  # as if FHIR_BULK_EXPIRY_SECONDS had passed
        conn.execute(update(BULK_JOB).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert api.http.get(status_url).status_code == 404
    assert api.http.get(file_url).status_code == 404
