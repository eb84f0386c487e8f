"""Issue 18 item 5, the wards' rules (FHIR_WORKFLOWS=wards), over real HTTP with real tokens on both databases:
wards, rooms and beds as a Location hierarchy; admission assigns a bed atomically (20 concurrent admissions to
one bed on PostgreSQL: exactly one wins); transfer keeps the location history; discharge needs a signed
discharge summary and frees the bed; Location/$census counts beds and occupancy at any moment."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fhir_server.workflows.rules import RULE_SYSTEM
from tests.conftest import Backend
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

PHYSICAL = "http://terminology.hl7.org/CodeSystem/location-physical-type"
STATUS = "http://terminology.hl7.org/CodeSystem/v2-0116"
IMP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend, workflows="wards")


@pytest.fixture(scope="module")
def staff(smart: Smart) -> dict[str, str]:
    doctor = created(admin(smart, "POST", "Practitioner", json={"resourceType": "Practitioner"}))
    nurse = str(_user_token(smart, "nurse", "user/*.cruds")["access_token"])
    return {"nurse": nurse, "doctor": nurse, "practitioner": doctor["id"]}  # a nurse may file the summary too


_ADMIN_TOKENS: dict[int, str] = {}  # one backend token per server (minting one per request costs a sign-in)


def admin(smart: Smart, method: str, path: str, **kw: Any) -> httpx.Response:
    """Seed and check data with a backend token that may do anything."""
    token = _ADMIN_TOKENS.get(id(smart))
    if token is None:
        token = _ADMIN_TOKENS[id(smart)] = smart.system_token("system/*.cruds")
    return smart.fhir(method, path, token, **kw)


def created(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def refused(r: httpx.Response, status: int, rule: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert issue["details"]["coding"][0] == {"system": RULE_SYSTEM, "code": rule}, issue
    return dict(issue)


def location(smart: Smart, kind: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"resourceType": "Location", "name": f"{kind}-{uuid.uuid4().hex[:6]}", "mode": "instance",
            "physicalType": {"coding": [{"system": PHYSICAL, "code": kind}]}, **extra}
    if parent:
        body["partOf"] = {"reference": f"Location/{parent}"}
    return created(admin(smart, "POST", "Location", json=body))


def ward_with_beds(smart: Smart, count: int) -> tuple[str, list[str]]:
    ward = location(smart, "wa")["id"]
    room = location(smart, "ro", ward)["id"]
    beds = [location(smart, "bd", room, operationalStatus={"system": STATUS, "code": "U"})["id"] for _ in range(count)]
    return ward, beds


def patient(smart: Smart) -> str:
    return str(created(admin(smart, "POST", "Patient", json={"resourceType": "Patient"}))["id"])


def admission(patient_id: str, bed: str, start: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"location": {"reference": f"Location/{bed}"}, "status": "active"}
    if start:
        entry["period"] = {"start": start}
    return {"resourceType": "Encounter", "status": "in-progress", "class": IMP,
            "subject": {"reference": f"Patient/{patient_id}"}, "location": [entry]}


def bed_status(smart: Smart, bed: str) -> str:
    return str(created(admin(smart, "GET", f"Location/{bed}"))["operationalStatus"]["code"])


def summary(smart: Smart, staff: dict[str, str], encounter: dict[str, Any], *, attested: bool) -> None:
    body: dict[str, Any] = {
        "resourceType": "Composition", "status": "final", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]},
        "subject": encounter["subject"], "encounter": {"reference": f"Encounter/{encounter['id']}"},
        "author": [{"reference": f"Practitioner/{staff['practitioner']}"}], "title": "Discharge summary"}
    if attested:
        body["attester"] = [{"mode": "legal", "time": body["date"],
                             "party": {"reference": f"Practitioner/{staff['practitioner']}"}}]
    created(smart.fhir("POST", "Composition", staff["doctor"], json=body))


def test_beds_lie_in_rooms_and_wards(smart: Smart) -> None:
    r = admin(smart, "POST", "Location", json={"resourceType": "Location", "name": "stray bed",
                                                  "physicalType": {"coding": [{"system": PHYSICAL, "code": "bd"}]}})
    assert refused(r, 422, "ward-location-hierarchy")["expression"] == ["Location.partOf"]
    ward, _beds = ward_with_beds(smart, 0)
    other_bed = location(smart, "bd", location(smart, "wa")["id"])["id"]
    r = admin(smart, "POST", "Location", json={"resourceType": "Location", "name": "room in a bed",
                                                  "physicalType": {"coding": [{"system": PHYSICAL, "code": "ro"}]},
                                                  "partOf": {"reference": f"Location/{other_bed}"}})
    refused(r, 422, "ward-location-hierarchy")
    location(smart, "bd", ward)  # a bed straight in a ward is fine


def test_admission_takes_a_free_bed_and_no_bed_holds_two(smart: Smart, staff: dict[str, str]) -> None:
    _ward, [bed, dirty] = ward_with_beds(smart, 2)
    created(smart.fhir("POST", "Encounter", staff["nurse"], json=admission(patient(smart), bed)))
    assert bed_status(smart, bed) == "O"
    issue = refused(smart.fhir("POST", "Encounter", staff["nurse"], json=admission(patient(smart), bed)), 409,
                    "ward-bed-unavailable")
    assert issue["expression"] == ["Encounter.location[0]"]
    # nobody frees an occupied bed by hand (only a discharge or transfer), nor occupies one without an admission
    held = created(admin(smart, "GET", f"Location/{bed}"))
    freed = {**held, "operationalStatus": {"system": STATUS, "code": "U"}}
    refused(admin(smart, "PUT", f"Location/{bed}", json=freed), 409, "ward-bed-held")
    free = created(admin(smart, "GET", f"Location/{dirty}"))
    refused(admin(smart, "PUT", f"Location/{dirty}", json={**free, "operationalStatus": held["operationalStatus"]}),
            409, "ward-bed-held")
    contaminated = created(admin(smart, "GET", f"Location/{dirty}"))
    created(admin(smart, "PUT", f"Location/{dirty}", json={**contaminated, "operationalStatus": {
        "system": STATUS, "code": "K", "display": "Contaminated"}}))
    refused(smart.fhir("POST", "Encounter", staff["nurse"], json=admission(patient(smart), dirty)), 409,
            "ward-bed-unavailable")


def test_a_transfer_keeps_the_location_history(smart: Smart, staff: dict[str, str]) -> None:
    _ward, [first, second, third] = ward_with_beds(smart, 3)
    stay = created(smart.fhir("POST", "Encounter", staff["nurse"], json=admission(patient(smart), first)))
    moved = {**stay, "location": [*stay["location"], {"location": {"reference": f"Location/{second}"},
                                                     "status": "active"}]}
    moved = created(smart.fhir("PUT", f"Encounter/{stay['id']}", staff["nurse"], json=moved))
    old, new = moved["location"]
    assert old["status"] == "completed" and old["period"]["end"] >= old["period"]["start"]
    assert new["status"] == "active" and "end" not in new["period"]
    assert (bed_status(smart, first), bed_status(smart, second)) == ("U", "O")
    # dropping the earlier bed from the history is refused
    r = smart.fhir("PUT", f"Encounter/{stay['id']}", staff["nurse"], json={**moved, "location": [new]})
    refused(r, 422, "ward-location-history")
    # two new beds at once
    two = [*moved["location"], *({"location": {"reference": f"Location/{b}"}, "status": "active"}
                                 for b in (first, third))]
    refused(smart.fhir("PUT", f"Encounter/{stay['id']}", staff["nurse"], json={**moved, "location": two}), 422,
            "ward-one-bed")
    assert (bed_status(smart, first), bed_status(smart, third)) == ("U", "U")  # nothing half-written


def test_discharge_needs_a_signed_summary_and_frees_the_bed(smart: Smart, staff: dict[str, str]) -> None:
    _ward, [bed] = ward_with_beds(smart, 1)
    stay = created(smart.fhir("POST", "Encounter", staff["nurse"], json=admission(patient(smart), bed)))
    discharge = {**stay, "status": "finished"}
    issue = refused(smart.fhir("PUT", f"Encounter/{stay['id']}", staff["nurse"], json=discharge), 409,
                    "ward-discharge-summary-missing")
    assert issue["expression"] == ["Encounter.status"]
    summary(smart, staff, stay, attested=False)  # written but not signed
    refused(smart.fhir("PUT", f"Encounter/{stay['id']}", staff["nurse"], json=discharge), 409,
            "ward-discharge-summary-missing")
    assert bed_status(smart, bed) == "O"
    summary(smart, staff, stay, attested=True)
    done = created(smart.fhir("PUT", f"Encounter/{stay['id']}", staff["nurse"], json=discharge))
    assert done["status"] == "finished" and done["period"]["end"]
    assert done["location"][0]["status"] == "completed" and done["location"][0]["period"]["end"]
    assert bed_status(smart, bed) == "U"
    created(smart.fhir("POST", "Encounter", staff["nurse"], json=admission(patient(smart), bed)))  # free again


def test_census_and_occupancy_at_any_moment(smart: Smart, staff: dict[str, str]) -> None:
    ward, beds = ward_with_beds(smart, 4)
    now = datetime.now(UTC)
    admitted = (now - timedelta(hours=2)).isoformat(timespec="seconds")
    stays = [created(smart.fhir("POST", "Encounter", staff["nurse"], json=admission(patient(smart), b, admitted)))
             for b in beds[:3]]
    summary(smart, staff, stays[0], attested=True)
    created(smart.fhir("PUT", f"Encounter/{stays[0]['id']}", staff["nurse"], json={**stays[0], "status": "finished"}))

    def census(at: datetime) -> dict[str, Any]:
        query = f"Location/$census?ward=Location/{ward}&date={at.isoformat().replace('+00:00', 'Z')}"
        params = created(smart.fhir("GET", query, staff["nurse"]))["parameter"]
        [row] = [p for p in params if p["name"] == "ward"]
        assert row["part"][0]["valueReference"] == {"reference": f"Location/{ward}"}
        return {p["name"]: p.get("valueInteger", p.get("valueDecimal")) for p in row["part"][1:]}

    assert census(now - timedelta(hours=3)) == {"beds": 4, "occupied": 0, "available": 4, "occupancy": 0.0}
    assert census(now - timedelta(hours=1)) == {"beds": 4, "occupied": 3, "available": 1, "occupancy": 75.0}
    assert census(datetime.now(UTC) + timedelta(seconds=1)) == {"beds": 4, "occupied": 2, "available": 2,
                                                                "occupancy": 50.0}
    everything = created(smart.fhir("GET", "Location/$census", staff["nurse"]))["parameter"]
    total = {p["name"]: p.get("valueInteger") for p in next(x for x in everything if x["name"] == "total")["part"]}
    assert total["beds"] >= 4 and total["occupied"] >= 2
    locations_only = smart.system_token("system/Location.rs")  # may not count the patients' Encounters
    assert smart.fhir("GET", "Location/$census", locations_only).status_code == 403
    bad = smart.fhir("GET", "Location/$census?date=yesterday", staff["nurse"])
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["date"]


def test_twenty_concurrent_admissions_to_one_bed_one_wins(smart: Smart, staff: dict[str, str]) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("concurrent writers: PostgreSQL (SQLite serialises writers by its database lock)")
    _ward, [bed] = ward_with_beds(smart, 1)
    batch = created(admin(smart, "POST", "", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}] * 20}))
    patients = [e["response"]["location"].split("/")[1] for e in batch["entry"]]
    barrier = threading.Barrier(20)
    statuses: list[int] = []

    def admit(patient_id: str) -> None:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            r = http.post(f"{smart.base}/Encounter", json=admission(patient_id, bed),
                          headers={"Authorization": f"Bearer {staff['nurse']}", "Accept": "application/fhir+json"})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=admit, args=(p,)) for p in patients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [201] + [409] * 19, statuses
    assert bed_status(smart, bed) == "O"
    found = created(admin(smart, "GET", f"Encounter?location=Location/{bed}&_summary=count"))
    assert found["total"] == 1
