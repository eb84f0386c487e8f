"""Bulk $import of NDJSON (uploaded body, Binary/[id], http URL) through the REST write path, both databases."""

from __future__ import annotations

import orjson
from sqlalchemy import update

from fhir_server.jobs.runner import run_job
from fhir_server.jobs.tables import BULK_JOB
from tests.conftest import LiveServer
from tests.integration.bulk_support import ASYNC, download, kick_off, poll

NDJSON = {"Content-Type": "application/fhir+ndjson"}


def lines(*resources: object) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else orjson.dumps(r) for r in resources) + b"\n"


def test_import_with_bad_lines_reports_each_and_goes_on(api: LiveServer) -> None:
    body = lines({"resourceType": "Patient", "id": "imp-1", "name": [{"family": "Rao"}]},
                 b"{not json",
                 {"resourceType": "Patient", "gender": "x"},  # invalid code: refused by validation
                 {"resourceType": "Observation", "status": "final", "code": {"text": "hb"},
                  "subject": {"reference": "Patient/imp-1"}},
                 b"",  # blank lines are skipped
                 {"resourceType": "Nope"},
                 {"resourceType": "Patient", "id": "imp-1", "name": [{"family": "Rao-Iyer"}]})
    resp = poll(api.http, kick_off(api.http, "$import", content=body, headers=NDJSON))
    assert resp.status_code == 200, resp.text
    manifest = resp.json()
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Patient": 2, "Observation": 1}
    errors = download(api.http, manifest, key="error")["OperationOutcome"]
    by_line = {o["issue"][0]["location"][0]: o["issue"][0] for o in errors}
    assert set(by_line) == {"Line[2]", "Line[3]", "Line[6]"}
    assert "gender" in " ".join(by_line["Line[3]"].get("expression", [])) + by_line["Line[3]"]["diagnostics"]
    assert by_line["Line[6]"]["expression"] == ["resourceType"]
    # Same write path as REST: versions, and the search index.
    patient = api.http.get("Patient/imp-1").json()
    assert patient["meta"]["versionId"] == "2" and patient["name"][0]["family"] == "Rao-Iyer"
    found = api.http.get("Patient", params={"family": "Rao-Iyer"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == ["imp-1"]
    assert api.http.get("Observation", params={"subject": "Patient/imp-1"}).json()["total"] == 1


def test_import_from_binary_and_url_inputs(api: LiveServer) -> None:
    body = lines(*({"resourceType": "Patient", "id": f"u-{i}"} for i in range(450)))  # > one batch of 200
    binary = api.http.post("Binary", content=body, headers={"Content-Type": "application/fhir+ndjson"})
    assert binary.status_code == 201, binary.text
    bid = binary.json()["id"] if binary.content else binary.headers["Location"].split("/")[-3]
    orgs = lines({"resourceType": "Organization", "name": "Lab"}, {"resourceType": "Patient"})
    org_binary = api.http.post("Binary", content=orgs, headers={"Content-Type": "application/fhir+ndjson"})
    oid = org_binary.headers["Location"].split("/Binary/")[1].split("/")[0]
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                                   {"name": "url", "valueUri": f"Binary/{bid}"}]},
        {"name": "input", "part": [{"name": "type", "valueCode": "Organization"},
                                   {"name": "url", "valueUri": f"{api.url}/Binary/{oid}"}]}]}
    manifest = poll(api.http, kick_off(api.http, "$import", json=params)).json()
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Patient": 450, "Organization": 1}
    errors = download(api.http, manifest, key="error")["OperationOutcome"]
    assert len(errors) == 1 and "declared as Organization" in errors[0]["issue"][0]["diagnostics"]
    assert api.http.get("Patient/u-449").status_code == 200


def test_import_kick_off_errors(api: LiveServer) -> None:
    assert api.http.post("$import", content=b"{}", headers=NDJSON).status_code == 400  # no Prefer
    bad = {"resourceType": "Parameters", "parameter": [{"name": "input", "part": [
        {"name": "url", "valueUri": "file:///etc/passwd"}]}]}
    resp = api.http.post("$import", json=bad, headers=ASYNC)
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["input.url"]
    assert api.http.get("$import", headers=ASYNC).status_code == 405


def test_import_of_a_missing_url_fails_with_an_outcome(api: LiveServer) -> None:
    params = {"resourceType": "Parameters", "parameter": [{"name": "input", "part": [
        {"name": "url", "valueUri": f"{api.url}/Binary/does-not-exist"}]}]}
    resp = poll(api.http, kick_off(api.http, "$import", json=params))
    assert resp.status_code == 500
    issue = resp.json()["issue"][0]
    assert issue["code"] == "exception" and "HTTP 404" in issue["diagnostics"]


def test_rerun_after_a_lost_checkpoint_creates_no_duplicates(api: LiveServer) -> None:
    body = lines(*({"resourceType": "Patient", "name": [{"family": f"N{i}"}]} for i in range(5)))
    status_url = kick_off(api.http, "$import", content=body, headers=NDJSON)
    assert poll(api.http, status_url).status_code == 200
    job_id = status_url.split("_jobId=")[1]
    # As if the worker died after the batch committed but before its checkpoint: the job runs again.
    with api.backend.engine.begin() as conn:
        conn.execute(update(BULK_JOB).where(BULK_JOB.c.id == job_id).values(status="queued", progress={}))
    assert run_job(api.fhir, job_id) == "completed"
    found = api.http.get("Patient", params={"_count": "50"}).json()
    assert found["total"] == 5
    assert {e["resource"]["meta"]["versionId"] for e in found["entry"]} == {"2"}


def test_import_inputs_may_refer_to_resources_of_later_inputs(api: LiveServer) -> None:
    """Referential integrity is not checked on $import: an Observation whose Patient comes in a later batch
    (batches of 200 lines, each its own unit of work) is stored."""
    body = lines({"resourceType": "Observation", "status": "final", "code": {"text": "hb"},
                  "subject": {"reference": "Patient/imp-late"}},
                 *({"resourceType": "Patient", "id": f"fill-{i}"} for i in range(250)),
                 {"resourceType": "Patient", "id": "imp-late"})
    manifest = poll(api.http, kick_off(api.http, "$import", content=body, headers=NDJSON)).json()
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Patient": 251, "Observation": 1}
    assert api.http.get("Observation", params={"subject": "Patient/imp-late"}).json()["total"] == 1
