"""FHIR XML over real HTTP: every interaction reads and writes application/fhir+xml (and _format=xml);
JSON stays the default; errors come back in the format asked for."""

from __future__ import annotations

from defusedxml.ElementTree import fromstring

from fhir_server.formats.xml import from_xml, to_xml
from tests.conftest import LiveServer
from tests.unit.test_xml_format import PATIENT_JSON, PATIENT_XML

XML = "application/fhir+xml"
NS = "{http://hl7.org/fhir}"


def _strip(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("meta", "id")}


def test_create_read_update_in_xml(api: LiveServer) -> None:
    created = api.http.post("Patient", content=PATIENT_XML, headers={"Content-Type": XML, "Accept": XML})
    assert created.status_code == 201, created.text
    assert created.headers["content-type"].startswith(XML)
    pid = from_xml(created.content)["id"]
    as_json = api.http.get(f"Patient/{pid}").json()  # JSON stays the default
    assert _strip(as_json) == _strip(PATIENT_JSON)
    for read in (api.http.get(f"Patient/{pid}", params={"_format": "xml"}),
                 api.http.get(f"Patient/{pid}", headers={"Accept": XML}),
                 api.http.get(f"Patient/{pid}/_history/1", headers={"Accept": "application/xml"})):
        assert read.status_code == 200 and read.headers["content-type"].startswith(XML)
        assert from_xml(read.content) == as_json
    changed = {**as_json, "gender": "other"}
    updated = api.http.put(f"Patient/{pid}", content=to_xml(changed), headers={"Content-Type": XML})
    assert updated.status_code == 200 and updated.json()["gender"] == "other"


def test_search_and_transaction_bundles_in_xml(api: LiveServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5e3a1c2b-9f0d-4c2e-8a7b-6d5c4b3a2f10",
         "resource": {"resourceType": "Patient", "name": [{"family": "Xmlson"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "heart rate"},
                      "subject": {"reference": "urn:uuid:5e3a1c2b-9f0d-4c2e-8a7b-6d5c4b3a2f10"},
                      "valueQuantity": {"value": 72, "unit": "/min"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    answer = api.http.post("", content=to_xml(bundle), headers={"Content-Type": XML, "Accept": XML})
    assert answer.status_code == 200, answer.text
    response = from_xml(answer.content)
    assert response["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in response["entry"]] == ["201", "201"]
    found = api.http.get("Observation", params={"_format": "xml", "_include": "Observation:subject"})
    searchset = from_xml(found.content)
    assert searchset["type"] == "searchset"
    assert {e["resource"]["resourceType"] for e in searchset["entry"]} == {"Observation", "Patient"}
    root = fromstring(found.content)
    assert root.tag == f"{NS}Bundle" and root.find(f"{NS}entry/{NS}resource/{NS}Observation") is not None


def test_errors_answer_in_the_format_asked_for(api: LiveServer) -> None:
    missing = api.http.get("Patient/nowhere", headers={"Accept": XML})
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(XML)
    assert from_xml(missing.content)["resourceType"] == "OperationOutcome"
    bad = api.http.post("Patient", content=b'<Patient xmlns="http://hl7.org/fhir"><foo value="1"/></Patient>',
                        headers={"Content-Type": XML})
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["Patient.foo"]
    entity = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
              b'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>')
    refused = api.http.post("Patient", content=entity, headers={"Content-Type": XML})
    assert refused.status_code == 400 and "root:" not in refused.text
    assert api.http.get("Patient", params={"_count": 0}).json()["total"] == 0  # nothing was stored
    assert api.http.get("metadata", params={"_format": "text/turtle"}).status_code == 406


def test_binary_xml_content_stays_raw(api: LiveServer) -> None:
    cda = b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"><title>Note</title></ClinicalDocument>'
    stored = api.http.post("Binary", content=cda, headers={"Content-Type": "application/xml"})
    assert stored.status_code == 201, stored.text
    bid = stored.json()["id"]
    raw = api.http.get(f"Binary/{bid}", headers={"Accept": "application/xml"})
    assert raw.content == cda
    as_resource = from_xml(api.http.get(f"Binary/{bid}", headers={"Accept": XML}).content)
    assert as_resource["resourceType"] == "Binary" and as_resource["contentType"] == "application/xml"
