"""Concurrent writers through the real HTTP server, with real threads, on SQLite and PostgreSQL:
no lost update, no duplicate version, If-Match has exactly one winner, and 50 concurrent conditional
creates make exactly one resource."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import LiveServer

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def run_together(n: int, fn: Callable[[httpx.Client, int], httpx.Response], base: str) -> list[httpx.Response]:
    """Run fn in n threads, each with its own connection, released at the same moment."""
    barrier = threading.Barrier(n)

    def worker(i: int) -> httpx.Response:
        with httpx.Client(base_url=base + "/", timeout=120) as client:
            client.get("metadata")  # open the connection before the barrier
            barrier.wait()
            return fn(client, i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(worker, range(n)))


def test_concurrent_updates_lose_nothing(api: LiveServer) -> None:
    api.http.put("Patient/c1", json={"resourceType": "Patient", "id": "c1"}, headers=FHIR_JSON)
    per_thread = 5

    def update(client: httpx.Client, i: int) -> httpx.Response:
        last = None
        for k in range(per_thread):
            last = client.put("Patient/c1", json={"resourceType": "Patient", "id": "c1", "birthDate": f"19{i:02d}"},
                              headers={**FHIR_JSON, "X-Round": str(k)})
            assert last.status_code == 200, last.text
        assert last is not None
        return last

    run_together(10, update, api.url)
    final = api.http.get("Patient/c1").json()
    assert final["meta"]["versionId"] == str(1 + 10 * per_thread)
    history = api.http.get("Patient/c1/_history", params={"_count": 1000}).json()
    versions = [e["response"]["etag"] for e in history["entry"]]
    assert len(versions) == 51 and len(set(versions)) == 51


def test_if_match_has_exactly_one_winner(api: LiveServer) -> None:
    for round_ in range(5):
        rid = f"m{round_}"
        api.http.put(f"Patient/{rid}", json={"resourceType": "Patient", "id": rid}, headers=FHIR_JSON)

        def update(client: httpx.Client, i: int, rid: str = rid) -> httpx.Response:
            return client.put(f"Patient/{rid}", json={"resourceType": "Patient", "id": rid, "birthDate": f"20{i:02d}"},
                              headers={**FHIR_JSON, "If-Match": 'W/"1"'})

        statuses = Counter(r.status_code for r in run_together(8, update, api.url))
        assert statuses == {200: 1, 412: 7}, statuses
        assert api.http.get(f"Patient/{rid}").json()["meta"]["versionId"] == "2"


def test_fifty_concurrent_conditional_creates_make_one(api: LiveServer) -> None:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "race"}]}

    def create(client: httpx.Client, _i: int) -> httpx.Response:
        return client.post("Patient", json=body, headers={**FHIR_JSON, "If-None-Exist": "identifier=urn:mrn|race"})

    responses = run_together(50, create, api.url)
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: 49}, statuses
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(api.http.get("Patient", params={"identifier": "urn:mrn|race"}).json()["entry"]) == 1


def test_concurrent_conditional_updates_make_one(api: LiveServer) -> None:
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "cu-race"}]}

    def upsert(client: httpx.Client, _i: int) -> httpx.Response:
        return client.put("Patient", params={"identifier": "urn:mrn|cu-race"}, json=body, headers=FHIR_JSON)

    statuses = Counter(r.status_code for r in run_together(20, upsert, api.url))
    assert statuses == {201: 1, 200: 19}, statuses
    entries = api.http.get("Patient", params={"identifier": "urn:mrn|cu-race"}).json()["entry"]
    assert len(entries) == 1 and entries[0]["resource"]["meta"]["versionId"] == "20"


def test_concurrent_update_as_create_of_one_id(api: LiveServer) -> None:
    def put(client: httpx.Client, i: int) -> httpx.Response:
        return client.put("Patient/new1", json={"resourceType": "Patient", "id": "new1", "birthDate": f"19{i:02d}"},
                          headers=FHIR_JSON)

    statuses = Counter(r.status_code for r in run_together(12, put, api.url))
    assert statuses == {201: 1, 200: 11}, statuses
    assert api.http.get("Patient/new1").json()["meta"]["versionId"] == "12"
