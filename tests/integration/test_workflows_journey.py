"""Issue 17's "Done means", with every hospital workflow area on at once (FHIR_WORKFLOWS=all), through HTTP with
real tokens of the right roles, on both databases: a receptionist registers a patient (a near-duplicate is
refused), finds and books a slot nobody else can take, reschedules it; the patient is told (a real SMTP server
on loopback) of the booking, the move and the reminder; checks in (an Encounter with a queue position); the
doctor records vital signs, a coded diagnosis and a signed note that cannot be edited. And one transaction that
registers and books, through three areas in one unit of work."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from fhir_server.workflows.notifications.reminders import due_reminders
from terminology.core import core_resources
from tests.conftest import Backend, _free_port, wait_until
from tests.integration.notification_support import (
    SMTP_PASSWORD,
    SMTP_USER,
    SmsGateway,
    SmtpSink,
    start_sms_gateway,
)
from tests.integration.scheduling_support import ALL_DAYS, CARDIOLOGY, EXT, SNOMED, ZONE, Desk, day, expression, rule
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

MRN = "https://fhir-server.dev/sid/mrn"
ABHA = "https://healthid.ndhm.gov.in"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
DEPT = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "dept"}]}
ECHO = {"coding": [{"system": SNOMED, "code": "40701008", "display": "Echocardiography"}]}
VITAL = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
DAY = 2  # the appointment's day: always more than the reminder window (24 h) ahead when it is booked


@dataclass
class Hospital:
    smart: Smart
    smtp: SmtpSink
    sms: SmsGateway


@pytest.fixture(scope="module")
def hospital(backend: Backend) -> Iterator[Hospital]:
    backend.truncate()
    smtp, sms = SmtpSink(), start_sms_gateway()
    smtp_port = _free_port()
    smtp.start(smtp_port)
    try:
        for smart in smart_server(
            backend, workflows="all", scheduling_horizon_days=DAY + 2, outbox_dispatcher=True,
            outbox_poll_seconds=0.05, notify_smtp_host="127.0.0.1", notify_smtp_port=smtp_port,
            notify_smtp_security="none", notify_smtp_user=SMTP_USER, notify_smtp_password=SecretStr(SMTP_PASSWORD),
            notify_email_from="appointments@hospital.test", notify_sms_url=sms.url, notify_timeout_seconds=5):
            yield Hospital(smart, smtp, sms)
    finally:
        smtp.stop()
        sms.close()


def _signed_in(smart: Smart, role: str, fhir_user: str | None = None) -> Desk:
    return Desk(smart, str(_user_token(smart, role, "user/*.cruds", fhir_user=fhir_user)["access_token"]))


def _mrn(patient: dict[str, Any]) -> str:
    return next(str(i["value"]) for i in patient["identifier"] if i["system"] == MRN)


def _book(desk: Desk, proposal: dict[str, Any], patient: str) -> Any:
    return desk.call("POST", "Appointment/$book", {"resourceType": "Parameters", "parameter": [
        {"name": "appointment", "resource": proposal}, {"name": "patient", "valueReference": {"reference": patient}}]})


def _quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def test_a_patients_day_with_every_workflow_on(hospital: Hospital) -> None:
    smart = hospital.smart
    admin = Desk(smart, smart.system_token("system/*.cruds"))

    # The administrator sets up the department, its service and a doctor's hours: slots appear.
    org = admin.create({"resourceType": "Organization", "name": "City Hospital"})
    dept = admin.create({"resourceType": "Organization", "name": "Cardiology", "type": [DEPT],
                         "partOf": {"reference": f"Organization/{org['id']}"}})
    echo = admin.create({"resourceType": "HealthcareService", "name": "Echo clinic", "type": [ECHO],
                         "providedBy": {"reference": f"Organization/{dept['id']}"},
                         "extension": [{"url": EXT + "slot-duration", "valueDuration": _quantity(20, "min")}]})
    rao = admin.create({"resourceType": "Practitioner", "name": [{"prefix": ["Dr."], "family": "Rao"}]})
    practitioner = f"Practitioner/{rao['id']}"
    admin.create({"resourceType": "PractitionerRole", "active": True, "practitioner": {"reference": practitioner},
                  "organization": {"reference": f"Organization/{dept['id']}"},
                  "healthcareService": [{"reference": f"HealthcareService/{echo['id']}"}], "specialty": [CARDIOLOGY],
                  "availableTime": [{"daysOfWeek": ALL_DAYS, "availableStartTime": "09:00:00",
                                     "availableEndTime": "12:00:00"}]})
    slots = admin.slots(practitioner, DAY)
    assert [s["start"][11:16] for s in slots[:3]] == ["09:00", "09:20", "09:40"] and len(slots) == 9
    admin.create({"resourceType": "CodeSystem", "url": ICD10, "status": "active", "content": "fragment",
                  "concept": [{"code": "I10", "display": "Essential (primary) hypertension"}]})
    for value_set in core_resources([f"http://hl7.org/fhir/ValueSet/ucum-{n}" for n in ("bodytemp", "vitals-common")]):
        admin.create(value_set)  # the vital-signs profiles' unit bindings (`terminology load-core`)

    # The receptionist registers the patient: the day's MRN; a near-duplicate, strictly, is refused.
    desk = _signed_in(smart, "receptionist")
    email = f"ramesh.{uuid.uuid4().hex[:8]}@example.org"
    family = "Sharma" + uuid.uuid4().hex[:4].translate(str.maketrans("0123456789abcdef", "bcdfghjklmnpqrst"))
    ramesh = desk.create({"resourceType": "Patient", "name": [{"given": ["Ramesh"], "family": family}],
                          "gender": "male", "birthDate": "1980-04-12",
                          "identifier": [{"system": ABHA, "value": "91234567890123"}],
                          "telecom": [{"system": "email", "value": email, "rank": 1},
                                      {"system": "phone", "use": "mobile", "value": "+91-9845012345", "rank": 2}]})
    patient = f"Patient/{ramesh['id']}"
    mrn = _mrn(ramesh)
    assert mrn.startswith(f"PT-{datetime.now(ZONE):%Y%m%d}-") and len(mrn) == len("PT-20261207-0001")
    assert {"system": ABHA, "value": "91-2345-6789-0123"} in ramesh["identifier"]
    twin = {"resourceType": "Patient", "name": [{"given": ["Rames"], "family": family}], "gender": "male",
            "birthDate": "1980-04-12", "telecom": [{"system": "phone", "value": "+91 98450 12345"}]}
    refused = desk.call("POST", "Patient", twin, headers={"Prefer": "handling=strict"})
    assert refused.status_code == 409 and rule(refused) == "patient-possible-duplicate", refused.text
    assert ramesh["id"] in refused.text

    # $find offers the free slots; $book takes one; nobody else can take it.
    found = desk.call("GET", f"Appointment/$find?practitioner={practitioner}&start={day(DAY)}&end={day(DAY + 1)}"
                             f"&patient={patient}&_count=5")
    assert found.status_code == 200, found.text
    proposals = [e["resource"] for e in found.json()["entry"]]
    assert [p["start"][11:16] for p in proposals] == ["09:00", "09:20", "09:40", "10:00", "10:20"]
    booked = _book(desk, proposals[0], patient)
    assert booked.status_code == 200, booked.text
    appointment = booked.json()["entry"][0]["resource"]
    assert appointment["status"] == "booked"
    assert admin.read(proposals[0]["slot"][0]["reference"])["status"] == "busy"
    other_desk = _signed_in(smart, "receptionist")
    someone = other_desk.create({"resourceType": "Patient", "name": [{"given": ["Meena"], "family": "Iyer" + family}],
                                 "gender": "female", "birthDate": "1992-09-30"})
    taken = _book(other_desk, proposals[0], f"Patient/{someone['id']}")
    assert taken.status_code == 409 and rule(taken) == "slot-taken", taken.text

    # Rescheduled to 10:00: the old slot is free again, the new one busy, the move counted.
    moved = {**appointment, "slot": proposals[3]["slot"]}
    moved.pop("start"), moved.pop("end")
    r = desk.put(moved)
    assert r.status_code == 200, r.text
    appointment = r.json()
    assert appointment["start"] == proposals[3]["start"]
    assert [e["valueUnsignedInt"] for e in appointment["extension"] if e["url"] == EXT + "reschedule-count"] == [1]
    assert admin.read(proposals[0]["slot"][0]["reference"])["status"] == "free"
    assert admin.read(proposals[3]["slot"][0]["reference"])["status"] == "busy"

    # The patient is told: booked, rescheduled, then reminded the day before (the reminder check as it runs 23 h
    # before the start), each a real e-mail and a completed Communication.
    wait_until(lambda: len(hospital.smtp.to(email)) == 2, 20, "the booked and rescheduled e-mails")
    start = datetime.fromisoformat(appointment["start"])
    assert due_reminders(smart.auth.fhir, now=start.astimezone(UTC) - timedelta(hours=23)) == 1
    wait_until(lambda: len(hospital.smtp.to(email)) == 3, 20, "the reminder e-mail")
    messages = hospital.smtp.to(email)
    assert [m["Subject"] for m in messages] == ["Appointment confirmed", "Appointment rescheduled",
                                                "Appointment reminder"]
    assert f"{start.astimezone(ZONE):%d-%m-%Y %H:%M}" in messages[1].get_content()
    assert hospital.sms.received == []  # the e-mail is ranked first: one message per event

    def settled() -> bool:
        return all(c["status"] == "completed" for c in admin.search(f"Communication?subject={patient}"))

    wait_until(settled, 20, "the Communications completed")
    sent = admin.search(f"Communication?subject={patient}&_count=10")
    assert sorted(c["category"][0]["coding"][0]["code"] for c in sent) == [
        "appointment-booked", "appointment-reminder", "appointment-rescheduled"]
    assert all(c["reasonReference"] == [{"reference": f"Appointment/{appointment['id']}"}] for c in sent)

    # Check-in: the Encounter, first in the doctor's queue.
    r = desk.call("POST", f"Appointment/{appointment['id']}/$check-in")
    assert r.status_code == 200, r.text
    out = {p["name"]: p.get("resource", p.get("valuePositiveInt")) for p in r.json()["parameter"]}
    encounter = out["encounter"]
    assert out["appointment"]["status"] == "arrived" and out["queue-position"] == 1
    assert encounter["status"] == "arrived" and encounter["subject"] == {"reference": patient}
    assert encounter["serviceProvider"] == {"reference": f"Organization/{dept['id']}"}
    visit = {"reference": f"Encounter/{encounter['id']}"}

    # The doctor: vital signs (interpreted; an implausible one refused naming the element), a coded diagnosis,
    # a signed note that cannot be edited.
    doctor = _signed_in(smart, "doctor", fhir_user=practitioner)
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def vital(code: str, **value: Any) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "category": [VITAL],
                "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": patient},
                "encounter": visit, "effectiveDateTime": now, **value}

    bp = doctor.create(vital("85354-9", component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _quantity(150, "mm[Hg]")},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _quantity(80, "mm[Hg]")}]))
    assert "http://hl7.org/fhir/StructureDefinition/bp" in bp["meta"]["profile"]
    assert [c["interpretation"][0]["coding"][0]["code"] for c in bp["component"]] == ["H", "N"]
    fever = doctor.create(vital("8310-5", valueQuantity=_quantity(101.3, "[degF]")))
    assert fever["interpretation"][0]["coding"][0]["code"] == "H"
    r = doctor.call("POST", "Observation", vital("8310-5", valueQuantity=_quantity(113, "[degF]")))  # 45 Cel
    assert r.status_code == 422 and rule(r) == "clinic-vital-implausible", r.text
    assert "Observation.valueQuantity.value" in expression(r)

    diagnosis = {"resourceType": "Condition", "subject": {"reference": patient}, "encounter": visit,
                 "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                           "code": "encounter-diagnosis"}]}],
                 "code": {"coding": [{"system": ICD10, "code": "I10"}]}}
    assert doctor.create(diagnosis)["code"]["coding"][0]["code"] == "I10"
    r = doctor.call("POST", "Condition", {**diagnosis, "code": {"text": "high blood pressure"}})
    assert r.status_code == 422 and rule(r) == "clinic-code-required", r.text  # ICD-10 is here: code it

    note = doctor.create({
        "resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": patient}, "encounter": visit, "date": now, "author": [{"reference": practitioner}],
        "title": "OPD consultation", "attester": [{"mode": "legal", "time": now, "party": {"reference": practitioner}}],
        "section": [{"title": "Assessment", "text": {"status": "generated", "div":
                    '<div xmlns="http://www.w3.org/1999/xhtml">Essential hypertension</div>'}}]})
    r = doctor.put({**note, "title": "OPD consultation (edited)"})
    assert r.status_code == 409 and rule(r) == "clinic-note-signed", r.text
    assert doctor.read(f"Composition/{note['id']}")["title"] == "OPD consultation"




def test_one_transaction_registers_and_books_and_the_patient_is_told(hospital: Hospital) -> None:
    """Three areas in one unit of work: the front desk numbers the patient, scheduling fills the appointment
    from its slot and takes it, notifications tell the patient (entries in any order)."""
    smart = hospital.smart
    admin, desk = Desk(smart, smart.system_token("system/*.cruds")), _signed_in(smart, "receptionist")
    practitioner = f"Practitioner/{admin.create({'resourceType': 'Practitioner', 'name': [{'family': 'Iyer'}]})['id']}"
    admin.create({"resourceType": "PractitionerRole", "practitioner": {"reference": practitioner},
                  "availableTime": [{"daysOfWeek": ALL_DAYS, "availableStartTime": "14:00:00",
                                     "availableEndTime": "15:00:00"}]})
    slot = admin.slots(practitioner, DAY)[0]
    email, patient_url = f"tara.{uuid.uuid4().hex[:8]}@example.org", f"urn:uuid:{uuid.uuid4()}"
    r = desk.call("POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Appointment"}, "resource": {
            "resourceType": "Appointment", "status": "booked", "slot": [{"reference": f"Slot/{slot['id']}"}],
            "participant": [{"actor": {"reference": patient_url}, "status": "accepted"}]}},
        {"fullUrl": patient_url, "request": {"method": "POST", "url": "Patient"}, "resource": {
            "resourceType": "Patient", "name": [{"given": ["Tara"], "family": "Qwzx" + uuid.uuid4().hex[:4]}],
            "gender": "female", "birthDate": "1990-01-01", "telecom": [{"system": "email", "value": email}]}}]})
    assert r.status_code == 200, r.text
    appointment_at, patient_at = (e["response"]["location"].rsplit("/_history", 1)[0] for e in r.json()["entry"])
    assert _mrn(desk.read(patient_at)).startswith(f"PT-{datetime.now(ZONE):%Y%m%d}-")
    appointment = desk.read(appointment_at)
    assert appointment["start"] == slot["start"] and appointment["participant"][0]["actor"] == {
        "reference": patient_at}
    assert admin.read(f"Slot/{slot['id']}")["status"] == "busy"
    wait_until(lambda: len(hospital.smtp.to(email)) == 1, 20, "the booked e-mail")
    assert hospital.smtp.to(email)[0]["Subject"] == "Appointment confirmed"
