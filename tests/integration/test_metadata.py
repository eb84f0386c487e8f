"""GET /metadata: a CapabilityStatement generated from what the server supports."""

from __future__ import annotations

from fhir_server.definitions import resource_types
from tests.conftest import LiveServer


def test_capability_statement(api: LiveServer) -> None:
    r = api.http.get("metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["kind"] == "instance"
    assert cs["fhirVersion"] == "4.0.1" and "application/fhir+json" in cs["format"]
    assert cs["patchFormat"] == ["application/json-patch+json"]
    assert cs["implementation"]["url"] == api.url  # FHIR_BASE_URL unset: the base the request came to
    rest = cs["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    by_type = {res["type"]: res for res in rest["resource"]}
    assert set(by_type) == set(resource_types()) and len(by_type) == 146
    patient = by_type["Patient"]
    assert {"read", "vread", "create", "update", "patch", "delete", "history-instance", "history-type",
            "search-type"} <= {i["code"] for i in patient["interaction"]}
    assert patient["versioning"] == "versioned-update" and patient["conditionalCreate"] is True
    assert patient["conditionalDelete"] == "single"
    params = {p["name"]: p for p in patient["searchParam"]}
    assert params["identifier"]["definition"] == "http://hl7.org/fhir/SearchParameter/Patient-identifier"
    assert params["_id"]["type"] == "token"
