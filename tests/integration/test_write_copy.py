"""The bulk write (storage/bulk.py): rows reach the database as they were given, whatever characters their
strings hold (COPY's text format escapes backslash, tab, newline and carriage return), and are searchable
in the same transaction's answer."""

from __future__ import annotations

from tests.conftest import LiveServer

FHIR_JSON = {"Content-Type": "application/fhir+json"}
AWKWARD = "O\\Brien\tof\nthe\r\\N \\\\ Ünïcødé"


def test_awkward_strings_are_stored_and_indexed_exactly(api: LiveServer) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": AWKWARD, "given": ["\\N"]}],
               "identifier": [{"system": "urn:x:sys", "value": "a\\b\nc"}], "birthDate": "1970-01-02",
               "extension": [{"url": "http://example.org/x", "valueString": "\t"}],
               "text": {"status": "generated", "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\">{AWKWARD}</div>"}}
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5d1a0000-0000-4000-8000-000000000001", "resource": patient,
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:5d1a0000-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                      "valueQuantity": {"value": 1e-7, "unit": "kg", "system": "http://unitsofmeasure.org",
                                        "code": "kg"},
                      "effectiveDateTime": "2024-03-01T10:00:00+05:30",
                      "subject": {"reference": "urn:uuid:5d1a0000-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    r = api.http.post("", json=tx, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    pat_loc = r.json()["entry"][0]["response"]["location"].split("/_history")[0]
    stored = api.http.get(pat_loc).json()
    assert stored["name"] == patient["name"] and stored["identifier"] == patient["identifier"]
    assert stored["extension"] == patient["extension"] and stored["text"]["div"] == patient["text"]["div"]

    def found(rtype: str, **params: str) -> list[str]:
        resp = api.http.get(rtype, params=params)
        assert resp.status_code == 200, resp.text
        return [e["resource"]["id"] for e in resp.json().get("entry", [])]

    def escaped(value: str) -> str:  # a search value's backslash is FHIR's escape character (search.html#escaping)
        return value.replace("\\", "\\\\")

    pid = pat_loc.split("/")[1]
    assert found("Patient", **{"family:exact": escaped(AWKWARD)}) == [pid]
    assert found("Patient", given=escaped("\\N")) == [pid]  # not NULL: the two characters backslash, N
    assert found("Patient", identifier="urn:x:sys|" + escaped("a\\b\nc")) == [pid]
    assert found("Patient", birthdate="1970-01-02") == [pid]
    assert found("Observation", subject=pat_loc, date="2024-03-01T04:30:00Z") != []
    assert found("Observation", subject=pat_loc, **{"value-quantity": "1e-7|http://unitsofmeasure.org|kg"}) != []
    assert found("Patient", _content="Brien") == [pid]
