"""The transaction write path HL7 results take (PUT by id of many resources of several types): the current
rows are read and locked in one statement up front; versions, If-Match and concurrency still hold."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import LiveServer

TYPES = ("Observation", "Patient", "Specimen")


def resource(rtype: str, rid: str, n: int) -> dict[str, Any]:
    if rtype == "Observation":
        return {"resourceType": rtype, "id": rid, "status": "final", "code": {"text": f"run {n}"}}
    if rtype == "Patient":
        return {"resourceType": rtype, "id": rid, "name": [{"family": f"Run{n}"}]}
    return {"resourceType": rtype, "id": rid, "note": [{"text": f"run {n}"}]}


def put(rtype: str, rid: str, n: int, if_match: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "PUT", "url": f"{rtype}/{rid}"}
    if if_match:
        request["ifMatch"] = if_match
    return {"resource": resource(rtype, rid, n), "request": request}


def transaction(http: httpx.Client, entries: list[dict[str, Any]]) -> httpx.Response:
    return http.post("", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})


def test_puts_of_several_types_update_create_and_delete(api: LiveServer) -> None:
    ids = [(t, f"{t.lower()}-{i}") for t in TYPES for i in range(2)]
    assert transaction(api.http, [put(t, i, 0) for t, i in ids]).status_code == 200
    entries = [put(t, i, 1) for t, i in ids if i != "patient-1"]
    entries += [put("Observation", "fresh", 1), {"request": {"method": "DELETE", "url": "Patient/patient-1"}}]
    response = transaction(api.http, entries)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK"] * 5 + ["201 Created", "204 No Content"]
    assert api.http.get("Observation/observation-0").json()["meta"]["versionId"] == "2"
    assert api.http.get("Observation/fresh").json()["meta"]["versionId"] == "1"
    assert api.http.get("Patient/patient-1").status_code == 410
    assert api.http.get("Specimen/specimen-1").json()["note"][0]["text"] == "run 1"


def test_a_stale_if_match_in_an_entry_fails_the_whole_transaction(api: LiveServer) -> None:
    assert transaction(api.http, [put("Patient", "p", 0), put("Observation", "o", 0)]).status_code == 200
    response = transaction(api.http, [put("Observation", "o", 1, 'W/"1"'), put("Patient", "p", 1, 'W/"7"')])
    assert response.status_code == 412, response.text
    assert "Patient/p" in response.text
    assert api.http.get("Observation/o").json()["meta"]["versionId"] == "1"  # nothing half-written


def test_concurrent_transactions_over_the_same_resources_lose_no_update(api: LiveServer) -> None:
    ids = [(t, f"shared-{t.lower()}-{i}") for t in TYPES for i in range(2)]
    assert transaction(api.http, [put(t, i, 0) for t, i in ids]).status_code == 200
    rounds, workers = 5, 4

    def worker(w: int) -> list[int]:
        rng = random.Random(w)
        codes = []
        with httpx.Client(base_url=api.url, timeout=60) as http:
            for n in range(rounds):
                entries = [put(t, i, w * 100 + n) for t, i in ids]
                rng.shuffle(entries)  # every order of entries: the locks are still taken in one order
                codes.append(transaction(http, entries).status_code)
        return codes

    with ThreadPoolExecutor(workers) as pool:
        codes = [c for cs in pool.map(worker, range(workers)) for c in cs]
    assert codes == [200] * (rounds * workers)
    for t, i in ids:
        current = api.http.get(f"{t}/{i}").json()
        assert current["meta"]["versionId"] == str(1 + rounds * workers)
        history = api.http.get(f"{t}/{i}/_history", params={"_count": 100}).json()
        assert sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"]) == \
            list(range(1, 2 + rounds * workers))
