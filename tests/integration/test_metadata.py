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


def test_cached_statement_follows_installed_profiles(api: LiveServer) -> None:
    """metadata is serialised once and served from that cache: installing or deleting a profile still shows."""
    from tests.integration import validate_profiles as tp

    def patient_profiles() -> list[str] | None:
        by_type = {r["type"]: r for r in api.http.get("metadata").json()["rest"][0]["resource"]}
        return by_type["Patient"].get("supportedProfile")

    assert patient_profiles() is None and patient_profiles() is None  # the second from the cache
    for res in [*tp.terminology(), tp.patient_profile()]:
        assert api.http.put(f"{res['resourceType']}/{res['id']}", json=res).status_code in (200, 201)
    assert patient_profiles() == [tp.PATIENT]
    assert api.http.delete(f"StructureDefinition/{tp.patient_profile()['id']}").status_code in (200, 204)
    assert patient_profiles() is None


def test_summary_and_pretty_of_the_statement(api: LiveServer) -> None:
    full = api.http.get("metadata")
    summary = api.http.get("metadata", params={"_summary": "true"}).json()
    assert summary["resourceType"] == "CapabilityStatement" and summary["fhirVersion"] == "4.0.1"
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    pretty = api.http.get("metadata", params={"_pretty": "true"})
    assert pretty.text.startswith("{\n") and pretty.json() == full.json()
    assert api.http.get("metadata", params={"_summary": "nonsense"}).status_code == 400


def test_fhir_paths_of_other_routes_and_methods_keep_their_handling(api: LiveServer) -> None:
    """FHIR requests skip the router (api/fhir_fast_path.py), but not another route's path or another method."""
    r = api.http.request("OPTIONS", "Patient")
    assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
    assert api.http.get("Unknown/1").json()["resourceType"] == "OperationOutcome"
