"""JSON Patch and history (instance, type, system; _since, _count, paging)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import LiveServer

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}


def test_json_patch(api: LiveServer) -> None:
    api.http.put("Patient/jp", json={"resourceType": "Patient", "id": "jp", "active": True}, headers=FHIR_JSON)
    r = api.http.patch("Patient/jp", json=[{"op": "replace", "path": "/active", "value": False},
                                           {"op": "add", "path": "/name", "value": [{"family": "Rao"}]}],
                       headers={**PATCH, "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["active"] is False and r.json()["meta"]["versionId"] == "2"
    hist = api.http.get("Patient/jp/_history").json()
    assert hist["entry"][0]["request"]["method"] == "PUT"  # history shows the patch as an update


@pytest.mark.parametrize(("ops", "status"), [
    ([{"op": "test", "path": "/active", "value": False}], 422),       # test op fails
    ([{"op": "replace", "path": "/id", "value": "other"}], 422),      # may not change the id
    ([{"op": "add", "path": "/birthDate", "value": "31/12/1999"}], 400),  # result is not valid FHIR
    ([{"op": "remove", "path": "/nothing/here"}], 422),
    ({"op": "add"}, 400),                                              # not an array
])
def test_bad_patches(api: LiveServer, ops, status) -> None:  # type: ignore[no-untyped-def]
    api.http.put("Patient/bp", json={"resourceType": "Patient", "id": "bp", "active": True}, headers=FHIR_JSON)
    r = api.http.patch("Patient/bp", json=ops, headers=PATCH)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert api.http.get("Patient/bp").json()["meta"]["versionId"] == "1"


def test_patch_conflicts_and_media_type(api: LiveServer) -> None:
    api.http.put("Patient/pc", json={"resourceType": "Patient", "id": "pc"}, headers=FHIR_JSON)
    stale = api.http.patch("Patient/pc", json=[], headers={**PATCH, "If-Match": 'W/"3"'})
    assert stale.status_code == 412
    wrong = api.http.patch("Patient/pc", content=b"<x/>", headers={"Content-Type": "application/xml-patch+xml"})
    assert wrong.status_code == 415
    assert api.http.patch("Patient/none", json=[], headers=PATCH).status_code == 404


def test_history_levels_since_and_paging(api: LiveServer) -> None:
    for i in range(5):
        api.http.put("Patient/h1", json={"resourceType": "Patient", "id": "h1", "birthDate": f"200{i}"},
                     headers=FHIR_JSON)
    mid = datetime.now(UTC)
    api.http.put("Observation/o1", json={"resourceType": "Observation", "id": "o1", "status": "final",
                                         "code": {"text": "x"}}, headers=FHIR_JSON)
    api.http.delete("Patient/h1")

    inst = api.http.get("Patient/h1/_history").json()
    assert inst["type"] == "history" and inst["total"] == 6
    assert [e["response"]["etag"] for e in inst["entry"]] == [f'W/"{v}"' for v in range(6, 0, -1)]
    assert "resource" not in inst["entry"][0] and inst["entry"][0]["request"]["method"] == "DELETE"

    assert len(api.http.get("Patient/_history").json()["entry"]) == 6
    assert len(api.http.get("_history").json()["entry"]) == 7
    since = api.http.get("_history", params={"_since": mid.isoformat()}).json()
    assert [e["fullUrl"].rsplit("/", 2)[-2] for e in since["entry"]] == ["Patient", "Observation"]

    seen = []
    page = api.http.get("_history", params={"_count": 3}).json()
    while True:
        seen.extend(e["response"]["etag"] + e["fullUrl"] for e in page["entry"])
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        # a write between pages must not shift what the next page holds
        api.http.post("Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
        page = api.http.get(nxt[0]).json()
    assert len(seen) == 7 and len(set(seen)) == 7

    default_page = api.http.get("_history").json()
    assert "_count=20" in next(link["url"] for link in default_page["link"] if link["relation"] == "self")
    assert api.http.get("_history", params={"_since": "yesterday"}).status_code == 400
    assert api.http.get("_history", params={"_count": "many"}).status_code == 400
    assert api.http.get("Patient/unknown/_history").status_code == 404
