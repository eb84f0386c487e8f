"""Index rows follow every write in the resource's own transaction (both databases)."""

from __future__ import annotations

from sqlalchemy import select

from fhir_server.search.tables import STRING, TOKEN
from tests.conftest import LiveServer


def _names(api: LiveServer, rid: str) -> set[str]:
    with api.backend.engine.connect() as conn:
        return {r.value_norm for r in conn.execute(select(STRING.c.value_norm).where(
            STRING.c.resource_type == "Patient", STRING.c.resource_id == rid, STRING.c.param == "name"))}


def test_index_rows_replaced_on_update_and_removed_on_delete(api: LiveServer) -> None:
    created = api.http.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Old"}]}).json()
    rid = created["id"]
    assert _names(api, rid) == {"old"}
    api.http.put(f"Patient/{rid}", json={"resourceType": "Patient", "id": rid, "name": [{"family": "Néw"}]})
    assert _names(api, rid) == {"new"}
    api.http.delete(f"Patient/{rid}")
    assert _names(api, rid) == set()


def test_failed_transaction_leaves_no_index_rows(api: LiveServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "rolled-back"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient/does-not-exist"}}]}
    assert api.http.post("", json=bundle).status_code >= 400
    with api.backend.engine.connect() as conn:
        assert conn.execute(select(TOKEN.c.pk).where(TOKEN.c.code == "rolled-back")).first() is None


def test_rows_queued_in_a_transaction_are_written_once_and_searchable(api: LiveServer) -> None:
    entries = [{"fullUrl": f"urn:uuid:00000000-0000-0000-0000-00000000000{i}",
                "resource": {"resourceType": "Patient", "name": [{"family": f"Batch{i}"}]},
                "request": {"method": "POST", "url": "Patient"}} for i in range(5)]
    # the same resource written twice in one transaction: only the final version is indexed
    entries.append({"resource": {"resourceType": "Patient", "id": "twice", "name": [{"family": "First"}]},
                    "request": {"method": "PUT", "url": "Patient/twice"}})
    resp = api.http.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 200, resp.text
    found = api.http.get("Patient?name=batch").json()
    assert found["total"] == 5
    assert _names(api, "twice") == {"first"}
    api.http.put("Patient/twice", json={"resourceType": "Patient", "id": "twice", "name": [{"family": "Second"}]})
    assert _names(api, "twice") == {"second"}
