"""read, vread, create, update, delete and their headers (http.html), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.conftest import TENANT_BACKENDS, LiveServer

# Also in a non-default tenant: its own schema, through /fhir/{tenant} (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(**extra):  # type: ignore[no-untyped-def]
    return {"resourceType": "Patient", "name": [{"family": "Sharma", "given": ["Asha"]}],
            "birthDate": "1984-02-29", **extra}


def test_create_assigns_id_meta_and_headers(api: LiveServer) -> None:
    r = api.http.post("Patient", json=patient(id="client-chosen"), headers=FHIR_JSON)
    assert r.status_code == 201
    body = r.json()
    assert body["id"] != "client-chosen"  # create ignores a client id
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"{api.url}/Patient/{body['id']}/_history/1"
    assert r.headers["last-modified"].endswith("GMT")
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_read_vread_and_unknown(api: LiveServer) -> None:
    pid = api.http.post("Patient", json=patient(), headers=FHIR_JSON).json()["id"]
    r = api.http.get(f"Patient/{pid}")
    assert r.status_code == 200 and r.json()["name"][0]["family"] == "Sharma"
    assert r.headers["etag"] == 'W/"1"'
    assert api.http.get(f"Patient/{pid}/_history/1").json()["id"] == pid
    missing = api.http.get("Patient/does-not-exist")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert api.http.get(f"Patient/{pid}/_history/7").status_code == 404
    assert api.http.get("NoSuchType/1").status_code == 404
    assert api.http.get("Patient/bad id!").status_code == 400


def test_update_versions_and_update_as_create(api: LiveServer) -> None:
    r = api.http.put("Patient/mrn-42", json=patient(id="mrn-42"), headers=FHIR_JSON)
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "1"
    r = api.http.put("Patient/mrn-42", json=patient(id="mrn-42", gender="female"), headers=FHIR_JSON)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    assert r.headers["etag"] == 'W/"2"'
    assert api.http.get("Patient/mrn-42/_history/1").json().get("gender") is None
    assert api.http.get("Patient/mrn-42/_history/2").json()["gender"] == "female"


def test_update_id_rules(api: LiveServer) -> None:
    no_id = api.http.put("Patient/a1", json=patient(), headers=FHIR_JSON)
    assert no_id.status_code == 400
    assert no_id.json()["issue"][0]["expression"] == ["Patient.id"]
    mismatch = api.http.put("Patient/a1", json=patient(id="a2"), headers=FHIR_JSON)
    assert mismatch.status_code == 400 and "does not match" in mismatch.json()["issue"][0]["diagnostics"]
    wrong_type = api.http.put("Patient/a1", json={"resourceType": "Observation", "id": "a1"}, headers=FHIR_JSON)
    assert wrong_type.status_code == 400


def test_if_match(api: LiveServer) -> None:
    api.http.put("Patient/p1", json=patient(id="p1"), headers=FHIR_JSON)
    ok = api.http.put("Patient/p1", json=patient(id="p1", gender="male"), headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = api.http.put("Patient/p1", json=patient(id="p1"), headers={**FHIR_JSON, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["code"] == "conflict"
    assert api.http.get("Patient/p1").json()["meta"]["versionId"] == "2"


def test_delete_is_a_tombstone(api: LiveServer) -> None:
    api.http.put("Patient/d1", json=patient(id="d1"), headers=FHIR_JSON)
    r = api.http.delete("Patient/d1")
    assert r.status_code == 204 and r.headers["etag"] == 'W/"2"'
    gone = api.http.get("Patient/d1")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    assert api.http.get("Patient/d1/_history/1").status_code == 200
    assert api.http.get("Patient/d1/_history/2").status_code == 410
    again = api.http.delete("Patient/d1")  # already deleted: no new version
    assert again.status_code == 204
    hist = api.http.get("Patient/d1/_history").json()
    assert hist["total"] == 2 and hist["entry"][0]["request"]["method"] == "DELETE"
    revived = api.http.put("Patient/d1", json=patient(id="d1"), headers=FHIR_JSON)
    assert revived.status_code == 201 and revived.json()["meta"]["versionId"] == "3"
    assert api.http.delete("Patient/never-existed").status_code == 404


def test_prefer_return(api: LiveServer) -> None:
    minimal = api.http.post("Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and "location" in minimal.headers
    oo = api.http.post("Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=OperationOutcome"})
    assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"
    full = api.http.post("Patient", json=patient(), headers={**FHIR_JSON, "Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Patient"


def test_format_negotiation_and_pretty(api: LiveServer) -> None:
    pid = api.http.post("Patient", json=patient(), headers=FHIR_JSON).json()["id"]
    xml = api.http.get(f"Patient/{pid}", headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/fhir+xml")
    assert api.http.get(f"Patient/{pid}", params={"_format": "xml"}).text.startswith("<?xml")
    turtle = api.http.get(f"Patient/{pid}", params={"_format": "ttl"})
    assert turtle.status_code == 406 and turtle.json()["resourceType"] == "OperationOutcome"
    assert api.http.get(f"Patient/{pid}", params={"_format": "json"}).status_code == 200
    assert api.http.get(f"Patient/{pid}", headers={"Accept": "application/json"}).status_code == 200
    pretty = api.http.get(f"Patient/{pid}", params={"_pretty": "true"})
    assert b"\n  " in pretty.content
    assert b"\n" not in api.http.get(f"Patient/{pid}").content
    xml_body = api.http.post("Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert xml_body.status_code == 400  # FHIR XML, but not in the FHIR namespace
    assert "http://hl7.org/fhir" in xml_body.json()["issue"][0]["diagnostics"]


def test_head_and_if_none_match(api: LiveServer) -> None:
    pid = api.http.post("Patient", json=patient(), headers=FHIR_JSON).json()["id"]
    head = api.http.head(f"Patient/{pid}")
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == 'W/"1"'
    assert api.http.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304


def test_unsupported_interaction_is_405(api: LiveServer) -> None:
    r = api.http.post("Patient/abc", json=patient(), headers=FHIR_JSON)
    assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
    assert api.http.delete("metadata").status_code == 405


def test_if_modified_since(api: LiveServer) -> None:
    r = api.http.post("Patient", json=patient(), headers=FHIR_JSON)
    pid, last_modified = r.json()["id"], r.headers["last-modified"]
    assert api.http.get(f"Patient/{pid}", headers={"If-Modified-Since": last_modified}).status_code == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert api.http.get(f"Patient/{pid}", headers={"If-Modified-Since": old}).status_code == 200
    assert api.http.get(f"Patient/{pid}", headers={"If-Modified-Since": "garbage"}).status_code == 200


def test_read_with_summary_and_elements(api: LiveServer) -> None:
    body = patient(text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">A</div>"},
                   gender="female", photo=[{"contentType": "image/png", "data": "AAAA"}])
    pid = api.http.post("Patient", json=body, headers=FHIR_JSON).json()["id"]
    summary = api.http.get(f"Patient/{pid}", params={"_summary": "true"}).json()
    assert summary["gender"] == "female" and "photo" not in summary and "text" not in summary
    assert summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
    text = api.http.get(f"Patient/{pid}", params={"_summary": "text"}).json()
    assert "text" in text and "name" not in text
    data = api.http.get(f"Patient/{pid}", params={"_summary": "data"}).json()
    assert "text" not in data and "photo" in data
    elements = api.http.get(f"Patient/{pid}", params={"_elements": "birthDate"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "birthDate"}
    assert api.http.get(f"Patient/{pid}", params={"_summary": "maybe"}).status_code == 400
    full = api.http.get(f"Patient/{pid}").json()
    assert "tag" not in full["meta"]


def test_a_connection_dropped_by_the_server_is_replaced(api: LiveServer) -> None:
    if api.backend.name != "postgresql":
        return
    from sqlalchemy import text

    pid = api.http.post("Patient", json=patient(), headers=FHIR_JSON).json()["id"]
    with api.backend.engine.connect() as conn:  # terminate every other session of this database
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    for _ in range(25):  # more than the pool holds: every pooled connection was dropped
        assert api.http.get(f"Patient/{pid}").status_code == 200
