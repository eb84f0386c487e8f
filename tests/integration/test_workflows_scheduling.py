"""Scheduling rules (issue 17 items 4-7) over real HTTP with real tokens, on SQLite and PostgreSQL: the shapes
of departments and staff, slots from working hours, $find / $book, the appointment rules (each with a case
that passes and one that is refused), check-in to an Encounter with a queue position, and 50 concurrent
bookings of one slot on PostgreSQL (real threads) of which exactly one wins."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from fhir_server.workflows.scheduling.common import DATA
from tests.conftest import Backend
from tests.integration.scheduling_support import (
    CARDIOLOGY,
    EXT,
    SNOMED,
    ZONE,
    Desk,
    at,
    day,
    expression,
    rule,
)
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

UCUM = "http://unitsofmeasure.org"
DEPT = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "dept"}]}
ECHO = {"coding": [{"system": SNOMED, "code": "40701008", "display": "Echocardiography"}]}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend, workflows="scheduling", scheduling_timezone="Asia/Kolkata",
                            scheduling_min_lead_minutes=60, scheduling_horizon_days=2, scheduling_daily_cap=40)


@pytest.fixture(scope="module")
def admin(smart: Smart) -> Desk:
    return Desk(smart, smart.system_token("system/*.cruds"))


@pytest.fixture(scope="module")
def desk(smart: Smart) -> Desk:
    """The front desk: a receptionist's token."""
    return Desk(smart, str(_user_token(smart, "receptionist", "user/*.cruds")["access_token"]))


@pytest.fixture(scope="module")
def hospital(admin: Desk) -> dict[str, str]:
    org = admin.create({"resourceType": "Organization", "name": "City Hospital"})
    dept = admin.create({"resourceType": "Organization", "name": "Cardiology", "type": [DEPT],
                         "partOf": {"reference": f"Organization/{org['id']}"}})
    echo = admin.create({"resourceType": "HealthcareService", "name": "Echo clinic", "type": [ECHO],
                         "providedBy": {"reference": f"Organization/{dept['id']}"},
                         "extension": [{"url": EXT + "slot-duration",
                                        "valueDuration": {"value": 20, "unit": "min", "system": UCUM, "code": "min"}}]})
    return {"org": f"Organization/{org['id']}", "dept": f"Organization/{dept['id']}",
            "echo": f"HealthcareService/{echo['id']}"}


# --- item 4: departments, services, staff --------------------------------------------------------------------

def test_department_is_part_of_its_hospital(admin: Desk, hospital: dict[str, str]) -> None:
    r = admin.call("POST", "Organization", {"resourceType": "Organization", "name": "Orphan ward", "type": [DEPT]})
    assert r.status_code == 422 and rule(r) == "department-part-of" and expression(r) == ["Organization.partOf"]
    assert admin.read(hospital["dept"])["partOf"]["reference"] == hospital["org"]


def test_service_shape(admin: Desk, hospital: dict[str, str]) -> None:
    bad = {"resourceType": "HealthcareService", "providedBy": {"reference": hospital["dept"]},
           "extension": [{"url": EXT + "slot-duration", "valueDuration": {"value": 2, "system": UCUM, "code": "min"}}]}
    r = admin.call("POST", "HealthcareService", bad)
    assert r.status_code == 422 and rule(r) == "service-slot-duration"
    r = admin.call("POST", "HealthcareService", {"resourceType": "HealthcareService", "name": "No department"})
    assert r.status_code == 422 and rule(r) == "service-provided-by"


def test_role_shape(admin: Desk) -> None:
    practitioner = admin.create({"resourceType": "Practitioner", "name": [{"family": "Shape"}]})
    base = {"resourceType": "PractitionerRole", "practitioner": {"reference": f"Practitioner/{practitioner['id']}"}}
    r = admin.call("POST", "PractitionerRole", {**base, "availableTime": [
        {"daysOfWeek": ["mon"], "availableStartTime": "12:00:00", "availableEndTime": "09:00:00"}]})
    assert r.status_code == 422 and rule(r) == "role-available-time"
    assert expression(r) == ["PractitionerRole.availableTime[0].availableEndTime"]
    r = admin.call("POST", "PractitionerRole", {**base, "notAvailable": [{"description": "leave", "during": {}}]})
    assert r.status_code == 422 and rule(r) == "role-not-available"
    r = admin.call("POST", "PractitionerRole", {"resourceType": "PractitionerRole", "availableTime": [
        {"daysOfWeek": ["mon"], "allDay": True}]})
    assert r.status_code == 422 and rule(r) == "role-practitioner"
    assert admin.call("POST", "PractitionerRole", {**base, "availableTime": [{"daysOfWeek": ["mon"], "allDay": True}],
                                                   "notAvailable": [{"description": "CME",
                                                                     "during": {"start": at(5, "00:00")}}]}
                      ).status_code == 201


# --- item 5: slots from working hours ------------------------------------------------------------------------

def test_slots_from_hours_default_length_and_service_length(admin: Desk, hospital: dict[str, str]) -> None:
    plain = admin.doctor()
    schedule = admin.search(f"Schedule?actor={plain['role']}")
    assert len(schedule) == 1 and {a["reference"] for a in schedule[0]["actor"]} == {plain["role"],
                                                                                      plain["practitioner"]}
    slots = admin.slots(plain["practitioner"])
    assert [s["start"][11:16] for s in slots] == ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]
    assert slots[0]["end"][11:16] == "09:30" and slots[0]["specialty"] == [CARDIOLOGY]
    echo = admin.doctor(service=hospital["echo"])
    slots = admin.slots(echo["practitioner"])
    assert len(slots) == 9 and slots[0]["end"][11:16] == "09:20" and slots[0]["serviceType"] == [ECHO]
    checked = admin.call("POST", "Slot/$validate", slots[0])  # generated slots skip validation: valid R4 anyway
    assert checked.status_code == 200 and not [i for i in checked.json()["issue"] if i["severity"] == "error"]


def test_clinic_hours_daily_cap_and_leave(admin: Desk) -> None:
    early = admin.doctor(availableTime=[{"daysOfWeek": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                         "availableStartTime": "06:00:00", "availableEndTime": "09:30:00"}])
    assert [s["start"][11:16] for s in admin.slots(early["practitioner"])] == ["08:00", "08:30", "09:00"]
    capped = admin.doctor(extension=[{"url": EXT + "daily-cap", "valuePositiveInt": 2}])
    assert len(admin.slots(capped["practitioner"])) == 2
    on_leave = admin.doctor(notAvailable=[{"description": "conference",
                                           "during": {"start": at(1, "09:00"), "end": at(1, "10:30")}}])
    assert [s["start"][11:16] for s in admin.slots(on_leave["practitioner"])] == ["10:30", "11:00", "11:30"]


def test_change_of_hours_regenerates_future_free_slots_only(admin: Desk) -> None:
    doc = admin.doctor()
    booked = admin.slots(doc["practitioner"])[4]  # 11:00 tomorrow
    admin.book(admin.patient(), f"Slot/{booked['id']}")
    role = admin.read(doc["role"])
    role["availableTime"] = [{"daysOfWeek": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                              "availableStartTime": "14:00:00", "availableEndTime": "16:00:00"}]
    assert admin.put(role).status_code == 200
    assert [s["start"][11:16] for s in admin.slots(doc["practitioner"])] == ["14:00", "14:30", "15:00", "15:30"]
    still = admin.read(f"Slot/{booked['id']}")
    assert still["status"] == "busy" and still["start"] == booked["start"]  # the booked one stays
    assert len(admin.slots(doc["practitioner"], status="busy")) == 1


def test_generate_slots_operation(admin: Desk, smart: Smart) -> None:
    doc = admin.doctor()
    r = admin.call("POST", f"{doc['role']}/$generate-slots?start={day(5)}&end={day(7)}")
    assert r.status_code == 200, r.text
    out = {p["name"]: p.get("valueInteger", p.get("valueReference")) for p in r.json()["parameter"]}
    assert out["created"] == 2 * 6 and out["schedule"]["reference"].startswith("Schedule/")  # beyond the horizon
    assert len(admin.slots(doc["practitioner"], offset=6)) == 6
    again = admin.call("POST", f"{doc['role']}/$generate-slots?start={day(5)}&end={day(7)}")
    assert {p["name"]: p.get("valueInteger") for p in again.json()["parameter"]}["created"] == 0
    assert admin.call("POST", f"{doc['role']}/$generate-slots?start={day(6)}&end={day(1)}").status_code == 400
    reader = Desk(smart, smart.system_token("system/PractitionerRole.rs system/Slot.rs"))
    assert reader.call("POST", f"{doc['role']}/$generate-slots").status_code == 403


# --- item 6: $find and $book ---------------------------------------------------------------------------------

def test_find_by_practitioner_service_and_specialty(admin: Desk, hospital: dict[str, str], smart: Smart) -> None:
    doc = admin.doctor(service=hospital["echo"])
    patient = admin.patient()
    r = admin.call("GET", f"Appointment/$find?practitioner={doc['practitioner']}&start={day(1)}&end={day(2)}"
                          f"&patient={patient}&_count=4")
    assert r.status_code == 200, r.text
    proposals = [e["resource"] for e in r.json()["entry"]]
    assert len(proposals) == 4 and all(p["status"] == "proposed" for p in proposals)
    assert [p["start"][11:16] for p in proposals] == ["09:00", "09:20", "09:40", "10:00"]
    actors = {a["actor"]["reference"] for a in proposals[0]["participant"]}
    assert {doc["practitioner"], doc["role"], patient} <= actors and proposals[0]["slot"][0]["reference"]
    taken = admin.appointment(admin.patient(), practitioner=doc["practitioner"], start=at(1, "10:00"),
                              end=at(1, "10:20"))  # booked without a slot: the 10:00 slot is no longer offered
    assert taken.status_code == 201, taken.text
    later = admin.call("GET", f"Appointment/$find?practitioner={doc['practitioner']}&start={day(1)}&end={day(2)}")
    assert "10:00" not in [e["resource"]["start"][11:16] for e in later.json()["entry"]]
    by_service = admin.call("GET", f"Appointment/$find?service={hospital['echo']}&start={day(1)}&end={day(2)}"
                                   f"&_count=100")
    offered = {e["resource"]["slot"][0]["reference"] for e in by_service.json()["entry"]}
    assert offered >= {p["slot"][0]["reference"] for p in proposals[:3]}
    assert proposals[3]["slot"][0]["reference"] not in offered
    other = admin.call("GET", f"Appointment/$find?specialty={SNOMED}|0000000&start={day(1)}&end={day(2)}")
    assert other.json()["total"] == 0
    nobody = Desk(smart, smart.system_token("system/Observation.rs"))
    assert nobody.call("GET", "Appointment/$find").status_code == 403


def test_book_a_proposal_once(desk: Desk, admin: Desk) -> None:
    doc = admin.doctor()
    patient = admin.patient()
    found = desk.call("GET", f"Appointment/$find?practitioner={doc['practitioner']}&start={day(1)}&end={day(2)}")
    proposal = found.json()["entry"][0]["resource"]
    r = desk.call("POST", "Appointment/$book", {"resourceType": "Parameters", "parameter": [
        {"name": "appointment", "resource": proposal}, {"name": "patient", "valueReference": {"reference": patient}}]})
    assert r.status_code == 200, r.text
    booked = r.json()["entry"][0]["resource"]
    assert booked["status"] == "booked" and booked["id"]
    assert admin.read(proposal["slot"][0]["reference"])["status"] == "busy"
    again = desk.call("POST", "Appointment/$book", {"resourceType": "Parameters", "parameter": [
        {"name": "appointment", "resource": proposal}, {"name": "patient", "valueReference": {"reference":
                                                                                           admin.patient()}}]})
    assert again.status_code == 409 and rule(again) == "slot-taken"
    reader = Desk(desk.smart, desk.smart.system_token("system/Appointment.rs system/Slot.rs"))
    assert reader.call("POST", "Appointment/$book", {"resourceType": "Parameters", "parameter": [
        {"name": "appointment", "resource": found.json()["entry"][1]["resource"]}]}).status_code == 403


def test_no_double_booking_of_practitioner_or_patient(admin: Desk) -> None:
    doc, other = admin.doctor(), admin.doctor()
    first, second = admin.patient(), admin.patient()
    ok = admin.appointment(first, practitioner=doc["practitioner"], start=at(2, "15:00"), end=at(2, "15:30"))
    assert ok.status_code == 201, ok.text
    clash = admin.appointment(second, practitioner=doc["practitioner"], start=at(2, "15:15"), end=at(2, "15:45"))
    assert clash.status_code == 409 and rule(clash) == "practitioner-double-booked"
    assert admin.appointment(second, practitioner=doc["practitioner"], start=at(2, "15:30"),
                             end=at(2, "16:00")).status_code == 201  # back to back is fine
    via_role = admin.appointment(admin.patient(), practitioner=doc["role"], start=at(2, "15:40"), end=at(2, "15:50"))
    assert via_role.status_code == 409 and rule(via_role) == "practitioner-double-booked"  # the same person
    same_patient = admin.appointment(first, practitioner=other["practitioner"], start=at(2, "15:10"),
                                     end=at(2, "15:20"))
    assert same_patient.status_code == 409 and rule(same_patient) == "patient-double-booked"


def test_daily_cap_at_booking(admin: Desk) -> None:
    doc = admin.doctor(extension=[{"url": EXT + "daily-cap", "valuePositiveInt": 2}])
    for start, end in (("17:00", "17:20"), ("17:30", "17:50")):
        r = admin.call("POST", "Appointment", {
            "resourceType": "Appointment", "status": "booked", "start": at(2, start), "end": at(2, end),
            "participant": [{"actor": {"reference": admin.patient()}, "status": "accepted"},
                            {"actor": {"reference": doc["practitioner"]}, "status": "accepted"},
                            {"actor": {"reference": doc["role"]}, "status": "accepted"}]})
        assert r.status_code == 201, r.text
    over = admin.call("POST", "Appointment", {
        "resourceType": "Appointment", "status": "booked", "start": at(2, "18:00"), "end": at(2, "18:20"),
        "participant": [{"actor": {"reference": admin.patient()}, "status": "accepted"},
                        {"actor": {"reference": doc["practitioner"]}, "status": "accepted"},
                        {"actor": {"reference": doc["role"]}, "status": "accepted"}]})
    assert over.status_code == 409 and rule(over) == "practitioner-daily-cap"


def test_not_in_the_past_and_lead_time(admin: Desk) -> None:
    patient = admin.patient()
    now = datetime.now(ZONE)

    def iso(delta: timedelta) -> str:
        return (now + delta).isoformat(timespec="seconds")
    past = admin.appointment(patient, start=iso(timedelta(hours=-2)), end=iso(timedelta(hours=-1)))
    assert past.status_code == 422 and rule(past) == "appointment-in-past" and expression(past) == ["Appointment.start"]
    soon = admin.appointment(patient, start=iso(timedelta(minutes=30)), end=iso(timedelta(minutes=45)))
    assert soon.status_code == 422 and rule(soon) == "appointment-lead-time"
    assert admin.appointment(patient, start=iso(timedelta(hours=2)), end=iso(timedelta(hours=2, minutes=15))
                             ).status_code == 201


def test_at_most_two_reschedules(admin: Desk) -> None:
    doc = admin.doctor()
    slots = admin.slots(doc["practitioner"])
    appointment = admin.book(admin.patient(), f"Slot/{slots[0]['id']}")
    for n, slot in enumerate(slots[1:3], start=1):
        moved = {**appointment, "slot": [{"reference": f"Slot/{slot['id']}"}]}
        moved.pop("start"), moved.pop("end")
        r = admin.put(moved)
        assert r.status_code == 200, r.text
        appointment = r.json()
        count = [e["valueUnsignedInt"] for e in appointment["extension"] if e["url"] == EXT + "reschedule-count"]
        assert count == [n] and appointment["start"] == slot["start"]
    assert admin.read(f"Slot/{slots[0]['id']}")["status"] == "free"  # moved away: freed
    assert admin.read(f"Slot/{slots[2]['id']}")["status"] == "busy"
    third = {**appointment, "slot": [{"reference": f"Slot/{slots[3]['id']}"}]}
    third.pop("start"), third.pop("end")
    r = admin.put(third)
    assert r.status_code == 422 and rule(r) == "appointment-reschedule-limit"


def test_cancellation_needs_a_reason_and_frees_the_slot(admin: Desk) -> None:
    doc = admin.doctor()
    slot = admin.slots(doc["practitioner"])[0]
    appointment = admin.book(admin.patient(), f"Slot/{slot['id']}")
    r = admin.put({**appointment, "status": "cancelled"})
    assert r.status_code == 422 and rule(r) == "appointment-cancel-reason"
    assert expression(r) == ["Appointment.cancelationReason"]
    r = admin.put({**appointment, "status": "cancelled", "cancelationReason": {"text": "patient travelling"}})
    assert r.status_code == 200, r.text
    assert admin.read(f"Slot/{slot['id']}")["status"] == "free"
    assert admin.book(admin.patient(), f"Slot/{slot['id']}")["status"] == "booked"  # bookable again
    other = admin.book(admin.patient(), f"Slot/{admin.slots(doc['practitioner'])[0]['id']}")
    patch = admin.call("PATCH", f"Appointment/{other['id']}", [{"op": "replace", "path": "/status",
                                                               "value": "cancelled"}],
                       headers={"Content-Type": "application/json-patch+json"})
    assert patch.status_code == 422 and rule(patch) == "appointment-cancel-reason"  # every way of writing


def test_transaction_books_a_slot_once_and_writes_nothing_else(admin: Desk) -> None:
    doc = admin.doctor()
    slot = f"Slot/{admin.slots(doc['practitioner'])[0]['id']}"
    entry = {"request": {"method": "POST", "url": "Appointment"}, "resource": {
        "resourceType": "Appointment", "status": "booked", "slot": [{"reference": slot}]}}
    first, second = (dict(entry, resource={**entry["resource"], "participant": [  # type: ignore[dict-item]
        {"actor": {"reference": admin.patient()}, "status": "accepted"}]}) for _ in range(2))
    r = admin.call("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [first, second]})
    assert r.status_code == 409 and rule(r) == "slot-taken"
    assert admin.search(f"Appointment?slot={slot}") == [] and admin.read(slot)["status"] == "free"


def test_status_transitions(admin: Desk) -> None:
    doc = admin.doctor()
    slots = admin.slots(doc["practitioner"])
    proposed = admin.appointment(admin.patient(), slot=f"Slot/{slots[0]['id']}", status="proposed")
    assert proposed.status_code == 201, proposed.text
    appointment = proposed.json()
    for status in ("booked", "arrived", "fulfilled"):
        r = admin.put({**appointment, "status": status})
        assert r.status_code == 200, (status, r.text)
        appointment = r.json()
    r = admin.put({**appointment, "status": "booked"})
    assert r.status_code == 422 and rule(r) == "appointment-status-transition"
    assert expression(r) == ["Appointment.status"]
    skip = admin.book(admin.patient(), f"Slot/{slots[1]['id']}")
    r = admin.put({**skip, "status": "fulfilled"})  # booked -> fulfilled without arriving
    assert r.status_code == 422 and rule(r) == "appointment-status-transition"
    r = admin.appointment(admin.patient(), slot=f"Slot/{slots[2]['id']}", status="pending")
    assert r.status_code == 422 and rule(r) == "appointment-status"
    r = admin.call("DELETE", f"Appointment/{skip['id']}")
    assert r.status_code == 422 and rule(r) == "appointment-delete"


def test_three_consecutive_no_shows_raise_a_flag(desk: Desk, admin: Desk) -> None:
    doc = admin.doctor()
    slots = admin.slots(doc["practitioner"])
    patient = admin.patient()
    flags = "Flag?subject=" + patient
    for n, slot in enumerate(slots[:4], start=1):
        appointment = desk.book(patient, f"Slot/{slot['id']}")
        r = desk.put({**appointment, "status": "noshow"})  # a receptionist may not write Flags: the server does
        assert r.status_code == 200, r.text
        found = admin.search(flags)
        assert len(found) == (0 if n < 3 else 1), (n, found)
    flag = admin.search(flags)[0]
    assert flag["status"] == "active" and flag["code"]["coding"][0]["code"] == "repeated-no-show"
    other = admin.patient()  # two no-shows, then a visit, then one: no flag
    for slot, status in zip(slots[4:6], ("noshow", "noshow"), strict=True):
        appointment = admin.book(other, f"Slot/{slot['id']}")
        assert admin.put({**appointment, "status": status}).status_code == 200
    assert admin.search("Flag?subject=" + other) == []


# --- item 7: check-in ----------------------------------------------------------------------------------------

def test_check_in_creates_the_encounter_with_a_queue_position(desk: Desk, admin: Desk,
                                                               hospital: dict[str, str]) -> None:
    parameter = orjson.loads((DATA / "SearchParameter-Encounter-queue-position.json").read_bytes())
    assert admin.call("PUT", f"SearchParameter/{parameter['id']}", parameter).status_code in (200, 201)
    doc = admin.doctor(service=hospital["echo"], organization={"reference": hospital["dept"]})
    slots = admin.slots(doc["practitioner"])
    first = desk.book(admin.patient(), f"Slot/{slots[0]['id']}")
    second = desk.book(admin.patient(), f"Slot/{slots[1]['id']}")
    r = desk.call("POST", f"Appointment/{second['id']}/$check-in")
    assert r.status_code == 200, r.text
    out = {p["name"]: p.get("resource", p.get("valuePositiveInt")) for p in r.json()["parameter"]}
    encounter = out["encounter"]
    assert out["appointment"]["status"] == "arrived" and out["queue-position"] == 1
    assert encounter["class"]["code"] == "AMB" and encounter["status"] == "arrived"
    assert encounter["appointment"] == [{"reference": f"Appointment/{second['id']}"}]
    assert encounter["participant"][0]["individual"]["reference"] == doc["practitioner"]
    assert encounter["serviceType"] == ECHO and encounter["serviceProvider"]["reference"] == hospital["dept"]
    # check-in by writing the status: the Encounter already planned for it is updated, the next token number
    planned = desk.create({"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"},
                           "subject": first["participant"][0]["actor"],
                           "appointment": [{"reference": f"Appointment/{first['id']}"}]})
    assert desk.put({**first, "status": "arrived"}).status_code == 200
    today, tomorrow = quote(at(0, "00:00")), quote(at(1, "00:00"))  # the clinic's day, with its offset
    queue = desk.search(f"Encounter?practitioner={doc['practitioner']}&date=ge{today}&date=lt{tomorrow}"
                        f"&status=arrived&_sort=date")
    assert [e["appointment"][0]["reference"] for e in queue] == [f"Appointment/{second['id']}",
                                                                 f"Appointment/{first['id']}"]
    assert [next(x["valuePositiveInt"] for x in e["extension"] if x["url"] == EXT + "queue-position")
            for e in queue] == [1, 2]
    assert queue[1]["id"] == planned["id"] and queue[1]["status"] == "arrived"
    second_in_line = desk.search(f"Encounter?practitioner={doc['practitioner']}&queue-position=2")
    assert [e["id"] for e in second_in_line] == [planned["id"]]
    again = desk.call("POST", f"Appointment/{second['id']}/$check-in")
    assert again.status_code == 422 and rule(again) == "checkin-status"


def test_check_in_refused_without_appointment_rights(smart: Smart, admin: Desk) -> None:
    doc = admin.doctor()
    appointment = admin.book(admin.patient(), f"Slot/{admin.slots(doc['practitioner'])[0]['id']}")
    reader = Desk(smart, smart.system_token("system/Appointment.rs system/Encounter.rs"))
    assert reader.call("POST", f"Appointment/{appointment['id']}/$check-in").status_code == 403
    assert admin.read(f"Appointment/{appointment['id']}")["status"] == "booked"


# --- the database decides: 50 concurrent bookings of one slot ------------------------------------------------

def test_fifty_concurrent_bookings_of_one_slot(smart: Smart, admin: Desk) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("concurrency with real threads runs on PostgreSQL (SQLite serialises writers)")
    doc = admin.doctor()
    slot = admin.slots(doc["practitioner"])[0]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient",
                                                                       "name": [{"family": f"C{i}"}]}}
        for i in range(50)]}
    r = admin.call("POST", "", bundle)
    assert r.status_code == 200, r.text
    patients = [e["response"]["location"].split("/_history")[0] for e in r.json()["entry"]]

    def book(patient: str) -> Any:
        return admin.appointment(patient, slot=f"Slot/{slot['id']}")
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(book, patients))
    statuses = sorted(x.status_code for x in results)
    assert statuses == [201] + [409] * 49, statuses
    assert {rule(x) for x in results if x.status_code == 409} == {"slot-taken"}
    assert len(admin.search(f"Appointment?slot=Slot/{slot['id']}")) == 1


def test_concurrent_bookings_of_one_doctor_and_concurrent_check_ins(smart: Smart, admin: Desk) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("concurrency with real threads runs on PostgreSQL (SQLite serialises writers)")
    doc = admin.doctor()
    patients = [admin.patient() for _ in range(10)]

    def direct(patient: str) -> Any:  # no slot: only the practitioner's lock keeps them apart
        return admin.appointment(patient, practitioner=doc["practitioner"], start=at(2, "16:00"), end=at(2, "16:30"))
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = sorted(r.status_code for r in pool.map(direct, patients))
    assert statuses == [201] + [409] * 9, statuses
    slots = admin.slots(doc["practitioner"])
    booked = [admin.book(p, f"Slot/{s['id']}")["id"] for p, s in zip(patients[:6], slots, strict=True)]

    def check_in(appointment_id: str) -> Any:
        return admin.call("POST", f"Appointment/{appointment_id}/$check-in")
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(check_in, booked))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    tokens = sorted(next(p["valuePositiveInt"] for p in a.json()["parameter"] if p["name"] == "queue-position")
                    for a in answers)
    assert tokens == [1, 2, 3, 4, 5, 6]  # one token number each, none twice
