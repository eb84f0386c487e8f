"""The CapabilityStatement lists SearchParameters created at runtime (and drops deleted ones), through
the HTTP server on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer

NICKNAME = {"resourceType": "SearchParameter", "url": "http://example.org/SearchParameter/cap-nickname",
            "name": "nickname", "status": "active", "description": "Given names used as nicknames",
            "code": "nickname", "base": ["Patient", "RelatedPerson"], "type": "string",
            "expression": "Patient.name.where(use='nickname').given | RelatedPerson.name.where(use='nickname').given"}


def search_params(api: LiveServer, rtype: str) -> dict[str, dict[str, Any]]:
    resp = api.http.get("metadata")
    assert resp.status_code == 200, resp.text
    (entry,) = [r for r in resp.json()["rest"][0]["resource"] if r["type"] == rtype]
    return {p["name"]: p for p in entry["searchParam"]}


def test_runtime_search_parameter_in_capability_statement(api: LiveServer) -> None:
    before = search_params(api, "Patient")
    assert "nickname" not in before and before["name"]["type"] == "string"  # core ones are listed
    resp = api.http.post("SearchParameter", json=NICKNAME)
    assert resp.status_code == 201, resp.text
    sp_id = resp.json()["id"]
    for rtype in ("Patient", "RelatedPerson"):  # every base
        listed = search_params(api, rtype)["nickname"]
        assert listed == {"name": "nickname", "definition": NICKNAME["url"], "type": "string"}
    assert "nickname" not in search_params(api, "Practitioner")
    assert search_params(api, "Patient")["name"] == before["name"]

    retired = {**NICKNAME, "id": sp_id, "status": "retired"}
    assert api.http.put(f"SearchParameter/{sp_id}", json=retired).status_code == 200
    assert "nickname" not in search_params(api, "Patient")  # a retired parameter is not answered
    assert api.http.put(f"SearchParameter/{sp_id}", json={**NICKNAME, "id": sp_id}).status_code == 200
    assert "nickname" in search_params(api, "Patient")
    assert api.http.delete(f"SearchParameter/{sp_id}").status_code in (200, 204)
    assert "nickname" not in search_params(api, "Patient")
