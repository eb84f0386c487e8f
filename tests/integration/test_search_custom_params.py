"""SearchParameter resources created at runtime join the registry; $reindex back-fills them. SQLite and
PostgreSQL, through the HTTP server."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete

from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.search.fulltext.tables import SEARCH_TEXT
from fhir_server.search.tables import TABLES
from tests.conftest import SYSTEM, LiveServer, wait_until
from tests.integration.search_support import post

STRICT = {"Prefer": "handling=strict"}
NICKNAME = {"resourceType": "SearchParameter", "url": "http://example.org/SearchParameter/nickname",
            "name": "nickname", "status": "active", "description": "Given names used as nicknames",
            "code": "nickname", "base": ["Patient"], "type": "string",
            "expression": "Patient.name.where(use='nickname').given"}


def ids(api: LiveServer, query: str) -> set[str]:
    resp = api.http.get(query, headers=STRICT)
    assert resp.status_code == 200, resp.text
    return {e["resource"]["id"] for e in resp.json().get("entry", []) if e["search"]["mode"] == "match"}


def patient(nick: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Kumar", "given": ["Rajesh"]},
                                                {"use": "nickname", "given": [nick]}]}


def reindex(api: LiveServer, path: str = "Patient/$reindex") -> dict[str, int]:
    resp = api.http.post(path, json={"resourceType": "Parameters"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resourceType"] == "Parameters"
    return {p["name"]: p["valueInteger"] for p in body["parameter"] if "valueInteger" in p}


def test_runtime_parameter_lifecycle(api: LiveServer) -> None:
    old = post(api, patient("Raju"))
    assert api.http.get("Patient?nickname=raju", headers=STRICT).status_code == 400  # not known yet
    sp_id = post(api, NICKNAME)
    new = post(api, patient("Raj"))
    assert ids(api, "Patient?nickname=raj") == {new}  # written after: indexed; the older one not yet
    assert reindex(api)["count"] == 2
    assert ids(api, "Patient?nickname=raj") == {old, new}  # back-filled (string: starts-with)
    assert ids(api, "Patient?nickname:exact=Raju") == {old}
    caps = api.http.get("metadata").json()
    assert caps["resourceType"] == "CapabilityStatement"
    # Changing the expression drops the old rows; deleting the parameter removes it.
    changed = {**NICKNAME, "id": sp_id, "expression": "Patient.name.where(use='official').given"}
    assert api.http.put(f"SearchParameter/{sp_id}", json=changed).status_code == 200
    assert ids(api, "Patient?nickname=raj") == set()
    assert api.http.delete(f"SearchParameter/{sp_id}").status_code in (200, 204)
    resp = api.http.get("Patient?nickname=raj", headers=STRICT)
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["nickname"]


def test_other_types_and_system_reindex(api: LiveServer) -> None:
    org = post(api, {"resourceType": "Organization", "name": "Apollo"})
    enc = post(api, {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
                     "serviceProvider": {"reference": f"Organization/{org}"},
                     "priority": {"coding": [{"system": "urn:prio", "code": "urgent"}]}})
    post(api, {"resourceType": "SearchParameter", "url": "http://example.org/sp/enc-prio", "name": "prio",
               "status": "active", "description": "x", "code": "prio", "base": ["Encounter"], "type": "token",
               "expression": "Encounter.priority"})
    post(api, {"resourceType": "SearchParameter", "url": "http://example.org/sp/provider", "name": "provider",
               "status": "active", "description": "x", "code": "provider", "base": ["Encounter"],
               "type": "reference", "target": ["Organization"], "expression": "Encounter.serviceProvider"})
    counts = reindex(api, "$reindex")
    assert counts["count"] >= 4 and counts["rows"] > 0
    assert ids(api, "Encounter?prio=urn:prio|urgent") == {enc}
    assert ids(api, f"Encounter?provider=Organization/{org}") == {enc}
    assert ids(api, "Encounter?provider.name=apollo") == {enc}  # chains through the new reference


def test_invalid_search_parameters_are_refused(api: LiveServer) -> None:
    for over, element, status in (({"expression": "Patient.name.("}, "SearchParameter.expression", 422),
                                  ({"expression": "Observation.code"}, "SearchParameter.expression", 422),
                                  ({"code": "_nick"}, "SearchParameter.code", 422),
                                  ({"type": "bogus"}, "SearchParameter.type", 422),
                                  ({"base": ["NotAType"]}, "SearchParameter.base", 422)):
        resp = api.http.post("SearchParameter", json={**NICKNAME, **over})
        assert resp.status_code == status, (over, resp.text)
        outcome = resp.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert any(e.startswith(element) for i in outcome["issue"] for e in i.get("expression", [])), outcome
    assert api.http.get("SearchParameter").json().get("total", 0) == 0


def test_another_process_sees_the_parameter(api: LiveServer) -> None:
    other = FhirServer(api.backend.settings, api.backend.engine)  # as a second server process would

    def search(name: str) -> int:
        resp = other.handle(FhirRequest("GET", "Patient", [("nickname", name)], {"prefer": "handling=strict"},
                                        base_url=api.url, access=SYSTEM))
        return resp.status

    assert search("x") == 400
    post(api, NICKNAME)
    wait_until(lambda: search("x") == 200, 5, "the other server to load the new SearchParameter")
    created = other.handle(FhirRequest("POST", "Patient", [], {"content-type": "application/fhir+json"},
                                       body=b'{"resourceType":"Patient","name":[{"use":"nickname","given":["Mo"]}]}',
                                       base_url=api.url, access=SYSTEM))
    assert created.status == 201
    assert len(ids(api, "Patient?nickname=mo")) == 1  # the other server indexed it with the new parameter


def test_reindex_restores_missing_rows(api: LiveServer) -> None:
    """Resources written before the index existed (migration 0002/0006) get their rows from $reindex."""
    pid = post(api, {"resourceType": "Patient", "name": [{"family": "Legacy"}], "gender": "male",
                     "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">old</div>'}})
    with api.backend.engine.begin() as conn:
        for table in [*TABLES.values(), SEARCH_TEXT]:
            conn.execute(delete(table).where(table.c.resource_id == pid))
    assert ids(api, "Patient?family=legacy") == set()
    assert ids(api, "Patient?_text=old") == set()
    counts = reindex(api)
    assert counts["count"] == 1
    assert ids(api, "Patient?family=legacy&gender=male") == {pid}
    assert ids(api, "Patient?_text=old") == {pid}
    assert reindex(api)["rows"] == counts["rows"]  # again: the same rows, none doubled
    assert ids(api, "Patient?family=legacy") == {pid}


def test_reindex_is_post_only_and_checks_its_batch(api: LiveServer) -> None:
    assert api.http.get("Patient/$reindex").status_code in (400, 405)
    resp = api.http.post("Patient/$reindex?_count=0", json={"resourceType": "Parameters"})
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["_count"]
    for _ in range(5):
        post(api, {"resourceType": "Patient", "gender": "other"})
    resp = api.http.post("Patient/$reindex?_count=2", json={"resourceType": "Parameters"})
    assert resp.status_code == 200
    assert ids(api, "Patient?gender=other") and len(ids(api, "Patient?gender=other")) == 5
