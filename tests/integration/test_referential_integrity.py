"""Referential integrity (issue 12 item 15, rest/integrity.py, rest/cascade.py): dangling local references
are refused on write (422 naming the element), deleting what others refer to is refused (409) unless an
administrator asks for ``_cascade=delete``; FHIR_ENFORCE_REFERENTIAL_INTEGRITY=false restores the old
behaviour. Real HTTP on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import Backend, LiveServer
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}


def create(api: LiveServer, resource: dict[str, Any]) -> str:
    r = api.http.post(resource["resourceType"], json=resource, headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def obs(subject: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
            "subject": {"reference": subject}, **more}


def total(api: LiveServer, rtype: str) -> int:
    return int(api.http.get(rtype, params={"_total": "accurate", "_count": 0}).json()["total"])


def test_create_with_a_dangling_reference_is_422_naming_the_element(api: LiveServer) -> None:
    r = api.http.post("Observation", json=obs("Patient/nobody"), headers=JSON)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Observation.subject"]
    assert "Patient/nobody" in issue["diagnostics"]
    assert total(api, "Observation") == 0

    pid = create(api, {"resourceType": "Patient"})
    r = api.http.post("Observation", json=obs(f"Patient/{pid}", performer=[
        {"reference": f"Patient/{pid}"}, {"reference": "Practitioner/gone"}]), headers=JSON)
    assert r.status_code == 422
    assert [i["expression"] for i in r.json()["issue"]] == [["Observation.performer[1]"]]
    assert total(api, "Observation") == 0


def test_update_with_a_dangling_reference_is_422_and_keeps_the_old_version(api: LiveServer) -> None:
    pid = create(api, {"resourceType": "Patient"})
    oid = create(api, obs(f"Patient/{pid}"))
    r = api.http.put(f"Observation/{oid}", json={**obs("Patient/elsewhere"), "id": oid}, headers=JSON)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Observation.subject"]
    current = api.http.get(f"Observation/{oid}").json()
    assert current["meta"]["versionId"] == "1" and current["subject"]["reference"] == f"Patient/{pid}"
    patch = [{"op": "replace", "path": "/subject/reference", "value": "Patient/elsewhere"}]
    r = api.http.patch(f"Observation/{oid}", content=orjson.dumps(patch),
                       headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 422


def test_references_that_are_not_local_are_not_checked(api: LiveServer) -> None:
    pid = create(api, {"resourceType": "Patient"})
    resource = obs("#p", contained=[{"resourceType": "Patient", "id": "p"}],
                   performer=[{"reference": "https://other.example.org/fhir/Practitioner/1"},
                              {"identifier": {"system": "urn:npi", "value": "1"}}, {"display": "Dr Who"}],
                   specimen={"reference": "urn:uuid:8f0e6e64-0000-4000-8000-000000000001"},
                   focus=[{"reference": f"Patient/{pid}/_history/1"}])
    assert api.http.post("Observation", json=resource, headers=JSON).status_code == 201
    # a contained resource's own references are local ones
    resource["contained"][0]["generalPractitioner"] = [{"reference": "Practitioner/gone"}]
    r = api.http.post("Observation", json=resource, headers=JSON)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Observation.contained[0].generalPractitioner[0]"]


def test_versions_deleted_targets_and_self_references(api: LiveServer) -> None:
    pid = create(api, {"resourceType": "Patient"})
    r = api.http.post("Observation", json=obs(f"Patient/{pid}/_history/2"), headers=JSON)
    assert r.status_code == 422 and f"Patient/{pid}/_history/2" in r.json()["issue"][0]["diagnostics"]
    gone = create(api, {"resourceType": "Patient"})
    assert api.http.delete(f"Patient/{gone}").status_code == 204
    r = api.http.post("Observation", json=obs(f"Patient/{gone}"), headers=JSON)
    assert r.status_code == 422
    # a resource may name itself (PUT creating it, and later updates)
    me = {"resourceType": "Patient", "id": "self-ref", "link": [{"other": {"reference": "Patient/self-ref"},
                                                                 "type": "seealso"}]}
    assert api.http.put("Patient/self-ref", json=me, headers=JSON).status_code == 201
    assert api.http.put("Patient/self-ref", json=me, headers=JSON).status_code == 200
    assert api.http.delete("Patient/self-ref").status_code == 204


def test_transaction_targets_created_in_the_same_bundle_count(api: LiveServer) -> None:
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c1a8e-0000-4000-8000-000000000002", "resource": obs(
            "urn:uuid:6f1c1a8e-0000-4000-8000-000000000001"), "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:6f1c1a8e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "tx-put", "link": [
            {"other": {"reference": "Patient/tx-put2"}, "type": "seealso"}]},
         "request": {"method": "PUT", "url": "Patient/tx-put"}},
        {"resource": {"resourceType": "Patient", "id": "tx-put2"},
         "request": {"method": "PUT", "url": "Patient/tx-put2"}},
    ]}
    r = api.http.post("", json=tx, headers=JSON)
    assert r.status_code == 200, r.text
    assert total(api, "Patient") == 3 and total(api, "Observation") == 1


def test_transaction_with_a_dangling_reference_is_rolled_back_whole(api: LiveServer) -> None:
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c1a8e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:6f1c1a8e-0000-4000-8000-000000000002", "resource": obs("Patient/not-here"),
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    r = api.http.post("", json=tx, headers=JSON)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource.subject"] and "Patient/not-here" in issue["diagnostics"]
    assert total(api, "Patient") == 0 and total(api, "Observation") == 0


def test_batch_entry_with_a_dangling_reference_fails_alone(api: LiveServer) -> None:
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": obs("Patient/not-here"), "request": {"method": "POST", "url": "Observation"}},
    ]}
    r = api.http.post("", json=batch, headers=JSON)
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "422"]
    assert total(api, "Patient") == 1 and total(api, "Observation") == 0


def test_deleting_a_referenced_resource_is_409_listing_referrers(api: LiveServer) -> None:
    pid = create(api, {"resourceType": "Patient"})
    oids = [create(api, obs(f"Patient/{pid}")) for _ in range(7)]
    r = api.http.delete(f"Patient/{pid}")
    assert r.status_code == 409, r.text
    text = r.json()["issue"][0]["diagnostics"]
    assert sum(f"Observation/{o}" in text for o in oids) == 5 and "and 2 other resource(s)" in text
    assert api.http.get(f"Patient/{pid}").status_code == 200
    # conditional delete too
    assert api.http.delete("Patient", params={"_id": pid}).status_code == 409
    for oid in oids:
        assert api.http.delete(f"Observation/{oid}").status_code == 204
    assert api.http.delete(f"Patient/{pid}").status_code == 204


def test_transaction_checks_deletes_in_the_final_state(api: LiveServer) -> None:
    pid = create(api, {"resourceType": "Patient"})
    other = create(api, {"resourceType": "Patient"})
    oid = create(api, obs(f"Patient/{pid}"))
    moved = create(api, obs(f"Patient/{pid}"))
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
        {"request": {"method": "DELETE", "url": f"Observation/{oid}"}},
        {"resource": {**obs(f"Patient/{other}"), "id": moved},
         "request": {"method": "PUT", "url": f"Observation/{moved}"}},
    ]}
    r = api.http.post("", json=tx, headers=JSON)
    assert r.status_code == 200, r.text
    assert api.http.get(f"Patient/{pid}").status_code == 410
    # deleting a target while another entry keeps referring to it: refused, nothing deleted
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient/{other}"}},
        {"resource": {"resourceType": "Patient", "id": "keep"}, "request": {"method": "PUT", "url": "Patient/keep"}},
    ]}
    r = api.http.post("", json=tx, headers=JSON)
    assert r.status_code == 409 and f"Observation/{moved}" in r.json()["issue"][0]["diagnostics"]
    assert api.http.get(f"Patient/{other}").status_code == 200 and api.http.get("Patient/keep").status_code == 404


def test_cascade_delete_removes_referrers_recursively(api: LiveServer) -> None:
    pid = create(api, {"resourceType": "Patient"})
    eid = create(api, {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                       "subject": {"reference": f"Patient/{pid}"}})
    oid = create(api, obs(f"Patient/{pid}", encounter={"reference": f"Encounter/{eid}"}))
    note = create(api, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                        "hasMember": [{"reference": f"Observation/{oid}"}]})  # refers to a referrer only
    keep = create(api, {"resourceType": "Patient"})
    assert api.http.delete(f"Patient/{pid}", params={"_cascade": "nonsense"}).status_code == 400
    r = api.http.delete(f"Patient/{pid}", params={"_cascade": "delete"})
    assert r.status_code == 204, r.text
    for ref in (f"Patient/{pid}", f"Encounter/{eid}", f"Observation/{oid}", f"Observation/{note}"):
        assert api.http.get(ref).status_code == 410, ref
    assert api.http.get(f"Patient/{keep}").status_code == 200


def test_setting_off_restores_the_old_behaviour(api: LiveServer) -> None:
    settings = api.fhir.settings
    settings.enforce_referential_integrity = False
    try:
        oid = create(api, obs("Patient/nobody"))
        pid = create(api, {"resourceType": "Patient"})
        create(api, obs(f"Patient/{pid}"))
        assert api.http.delete(f"Patient/{pid}").status_code == 204
        assert api.http.get(f"Observation/{oid}").status_code == 200
    finally:
        settings.enforce_referential_integrity = True


# --- with tokens: who may cascade, and what a 409 tells ----------------------------------------------------------

@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, audit_enabled=True)


def _seed(smart: Smart) -> tuple[str, str]:
    r = smart.as_admin("POST", "Patient", content=b'{"resourceType": "Patient"}', headers=JSON)
    pid = r.json()["id"]
    r = smart.as_admin("POST", "Observation", content=orjson.dumps(obs(f"Patient/{pid}")), headers=JSON)
    assert r.status_code == 201, r.text
    return str(pid), str(r.json()["id"])


def test_409_names_only_referrers_the_caller_may_read(smart: Smart) -> None:
    pid, oid = _seed(smart)
    narrow = smart.system_token("system/Patient.rd")
    r = smart.fhir("DELETE", f"Patient/{pid}", narrow)
    assert r.status_code == 409
    text = r.json()["issue"][0]["diagnostics"]
    assert oid not in text and "Observation" not in text and "1 resource(s)" in text
    r = smart.fhir("DELETE", f"Patient/{pid}", smart.system_token("system/Patient.rd system/Observation.rs"))
    assert r.status_code == 409 and f"Observation/{oid}" in r.json()["issue"][0]["diagnostics"]


def test_cascade_is_for_administrators_and_audited(smart: Smart) -> None:
    pid, oid = _seed(smart)
    for scope in ("system/Patient.cruds system/Observation.cruds", "system/*.rs"):
        r = smart.fhir("DELETE", f"Patient/{pid}", smart.system_token(scope), params={"_cascade": "delete"})
        assert r.status_code == 403, (scope, r.text)
    assert smart.as_admin("GET", f"Observation/{oid}").status_code == 200
    r = smart.fhir("DELETE", f"Patient/{pid}", smart.system_token("system/*.cruds"), params={"_cascade": "delete"})
    assert r.status_code == 204, r.text
    assert smart.as_admin("GET", f"Observation/{oid}").status_code == 410
    events = smart.as_admin("GET", "AuditEvent", params={"entity": f"Observation/{oid}", "action": "D"}).json()
    whats = [{e["what"]["reference"] for e in ev["resource"].get("entity", []) if "what" in e}
             for ev in events.get("entry", [])]
    assert any({f"Patient/{pid}", f"Observation/{oid}"} <= w for w in whats), whats


def test_a_delete_racing_a_new_referrer_never_leaves_it_dangling(api: LiveServer) -> None:
    """The existence check locks its targets (FOR SHARE on PostgreSQL; SQLite writers take turns), so a
    delete and a create referring to the deleted resource never both succeed."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    barrier = Barrier(2)

    def refer(pid: str) -> int:
        barrier.wait(timeout=10)
        return int(api.http.post("Observation", json=obs(f"Patient/{pid}"), headers=JSON).status_code)

    def delete(pid: str) -> int:
        barrier.wait(timeout=10)
        return int(api.http.delete(f"Patient/{pid}").status_code)

    with ThreadPoolExecutor(2) as pool:
        for _ in range(12):
            pid = create(api, {"resourceType": "Patient"})
            made, gone = pool.submit(refer, pid), pool.submit(delete, pid)
            statuses = (made.result(), gone.result())
            assert statuses in ((201, 409), (422, 204)), statuses
