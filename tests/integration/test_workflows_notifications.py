"""Notifications (issue 17 item 11) through HTTP on both databases: Appointment and DiagnosticReport writes
become Communications sent by a real SMTP server and a real HTTP SMS gateway on loopback, via the outbox."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy import select

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.jobs import outbox_admin
from fhir_server.rest.server import FhirServer
from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.workflows.notifications.contacts import OPT_OUT
from fhir_server.workflows.notifications.record import TOPIC, communication_id
from fhir_server.workflows.notifications.reminders import CHECK_TOPIC, due_reminders
from fhir_server.workflows.notifications.transport import TransportError, send_email
from tests.conftest import Backend, _free_port, uvicorn_config, wait_until
from tests.integration.notification_support import (
    SMTP_PASSWORD,
    SMTP_USER,
    SmsGateway,
    SmtpSink,
    start_sms_gateway,
    tls_files,
)
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import smart_server

SMS_KEY = "Bearer sms-gateway-key"


@dataclass
class Notify:
    http: httpx.Client
    fhir: FhirServer
    backend: Backend
    smtp: SmtpSink
    sms: SmsGateway


@pytest.fixture(scope="module")
def notify(backend: Backend) -> Iterator[Notify]:
    smtp, sms = SmtpSink(), start_sms_gateway()
    smtp_port = _free_port()
    smtp.start(smtp_port)
    settings = backend.settings.model_copy(update={
        "workflows": "notifications", "outbox_dispatcher": True, "outbox_poll_seconds": 0.05,
        "notify_smtp_host": "127.0.0.1", "notify_smtp_port": smtp_port, "notify_smtp_security": "none",
        "notify_smtp_user": SMTP_USER, "notify_smtp_password": SecretStr(SMTP_PASSWORD),
        "notify_email_from": "appointments@hospital.test", "notify_sms_url": sms.url,
        "notify_sms_auth_header": SecretStr(f"Authorization: {SMS_KEY}"), "notify_max_attempts": 3,
        "notify_reminder_check_seconds": 1.0, "notify_timeout_seconds": 5})
    fhir = FhirServer(settings, backend.engine)
    app = create_app(settings, fhir, dispatcher=OutboxDispatcher(backend.engine, backoff_base=0.01))
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=_free_port(), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    base = f"http://127.0.0.1:{server.config.port}/fhir/"
    try:
        with httpx.Client(base_url=base, timeout=60, headers={"Accept": "application/fhir+json"}) as http:
            doctor = {"resourceType": "Practitioner", "id": "dr-rao", "name": [{"text": "Dr. Rao"}]}
            assert http.put("Practitioner/dr-rao", json=doctor).status_code in (200, 201)
            yield Notify(http, fhir, backend, smtp, sms)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        smtp.stop()
        sms.close()


def _phone() -> str:
    return f"+91-9{uuid.uuid4().int % 10**9:09d}"


def _patient(n: Notify, *, email: str | None = None, phone: str | None = None, language: str | None = None,
             **extra: Any) -> str:
    telecom = ([{"system": "email", "value": email, "rank": 1}] if email else []) + \
              ([{"system": "phone", "use": "mobile", "value": phone, "rank": 2}] if phone else [])
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"given": ["Asha"], "family": "Verma"}],
                            **({"telecom": telecom} if telecom else {}), **extra}
    if language:
        body["communication"] = [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": language}]},
                                  "preferred": True}]
    response = n.http.post("Patient", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _appointment(patient_id: str, start: datetime, status: str = "booked") -> dict[str, Any]:
    return {"resourceType": "Appointment", "status": status, "start": _iso(start),
            "end": _iso(start + timedelta(minutes=30)),
            "participant": [{"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/dr-rao", "display": "Dr. Rao"},
                             "status": "accepted"}]}


def _communications(n: Notify, patient_id: str) -> list[dict[str, Any]]:
    bundle = n.http.get("Communication", params={"subject": f"Patient/{patient_id}", "_count": "100"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def _event(communication: dict[str, Any]) -> str:
    return str(communication["category"][0]["coding"][0]["code"])


def _settled(n: Notify, patient_id: str, count: int) -> list[dict[str, Any]]:
    """The patient's Communications once ``count`` exist and none is still being prepared."""
    found: list[dict[str, Any]] = []

    def done() -> bool:
        found[:] = _communications(n, patient_id)
        return len(found) == count and all(c["status"] != "preparation" for c in found)

    wait_until(done, 20, f"{count} settled communications")
    return found


def _outbox(n: Notify, key: str) -> Any:
    with n.backend.engine.connect() as conn:
        return conn.execute(select(OUTBOX).where(OUTBOX.c.topic == TOPIC, OUTBOX.c.key == key)).first()


def test_booked_rescheduled_cancelled_go_out_by_email(notify: Notify) -> None:
    email = f"asha.{uuid.uuid4().hex[:8]}@example.org"
    pid = _patient(notify, email=email, phone=_phone())  # e-mail ranked first
    start = datetime.now(UTC) + timedelta(days=3)
    created = notify.http.post("Appointment", json=_appointment(pid, start))
    assert created.status_code == 201, created.text
    appointment = created.json()
    wait_until(lambda: len(notify.smtp.to(email)) == 1, 20, "the booked e-mail")
    [booked] = notify.smtp.to(email)
    assert booked["Subject"] == "Appointment confirmed" and booked["From"] == "appointments@hospital.test"
    body = booked.get_content()
    assert "Dear Asha Verma" in body and "Dr. Rao" in body
    assert f"{start.astimezone(ZoneInfo('Asia/Kolkata')):%d-%m-%Y %H:%M}" in body  # FHIR_NOTIFY_TIMEZONE
    assert SMTP_USER in notify.smtp.logins

    unchanged = {**appointment, "comment": "bring earlier reports"}  # neither status nor start: no message
    assert notify.http.put(f"Appointment/{appointment['id']}", json=unchanged).status_code == 200
    moved = {**unchanged, "start": _iso(start + timedelta(days=1)), "end": _iso(start + timedelta(days=1, minutes=30))}
    assert notify.http.put(f"Appointment/{appointment['id']}", json=moved).status_code == 200
    wait_until(lambda: len(notify.smtp.to(email)) == 2, 20, "the rescheduled e-mail")
    cancelled = {**moved, "status": "cancelled", "cancelationReason": {"text": "patient request"}}
    assert notify.http.put(f"Appointment/{appointment['id']}", json=cancelled).status_code == 200
    wait_until(lambda: len(notify.smtp.to(email)) == 3, 20, "the cancelled e-mail")
    assert [m["Subject"] for m in notify.smtp.to(email)] == [
        "Appointment confirmed", "Appointment rescheduled", "Appointment cancelled"]

    sent = _settled(notify, pid, 3)
    assert sorted(_event(c) for c in sent) == ["appointment-booked", "appointment-cancelled",
                                               "appointment-rescheduled"]
    for communication in sent:
        assert communication["status"] == "completed" and communication["sent"]
        assert communication["reasonReference"] == [{"reference": f"Appointment/{appointment['id']}"}]
        assert communication["medium"][0]["coding"][0]["code"] == "EMAILWRIT"
        assert communication["recipient"] == [{"reference": f"Patient/{pid}"}]
        assert notify.smtp.to(email)[0]["Message-ID"] is not None
    assert len(notify.smtp.to(email)) == 3  # the unchanged update sent nothing


def test_results_ready_by_sms_in_hindi_once(notify: Notify) -> None:
    phone = _phone()
    pid = _patient(notify, phone=phone, language="hi-IN")
    report = {"resourceType": "DiagnosticReport", "status": "preliminary", "subject": {"reference": f"Patient/{pid}"},
              "code": {"text": "CBC"}}
    created = notify.http.post("DiagnosticReport", json=report).json()
    final = {**created, "status": "final"}
    assert notify.http.put(f"DiagnosticReport/{created['id']}", json=final).status_code == 200
    [communication] = _settled(notify, pid, 1)
    assert communication["status"] == "completed" and communication["language"] == "hi"
    assert _event(communication) == "results-ready"
    assert communication["reasonReference"] == [{"reference": f"DiagnosticReport/{created['id']}"}]
    assert communication["medium"][0]["text"] == "SMS"
    [request] = notify.sms.to(phone)
    assert request.headers["authorization"] == SMS_KEY
    assert request.headers["idempotency-key"] == request.body["reference"] == communication["id"]
    assert "रिपोर्ट तैयार है" in request.body["message"] and "CBC" in request.body["message"]
    assert "Asha Verma जी" in request.body["message"]

    again = {**final, "conclusion": "normal"}  # still final: no second message
    assert notify.http.put(f"DiagnosticReport/{created['id']}", json=again).status_code == 200
    assert len(_settled(notify, pid, 1)) == 1 and len(notify.sms.to(phone)) == 1


def test_preliminary_report_sends_nothing(notify: Notify) -> None:
    phone = _phone()
    pid = _patient(notify, phone=phone)
    report = {"resourceType": "DiagnosticReport", "status": "preliminary", "subject": {"reference": f"Patient/{pid}"},
              "code": {"text": "Lipid panel"}}
    assert notify.http.post("DiagnosticReport", json=report).status_code == 201
    assert _communications(notify, pid) == [] and notify.sms.to(phone) == []


def test_opted_out_patient_gets_no_message_and_a_not_done_communication(notify: Notify) -> None:
    email = f"optout.{uuid.uuid4().hex[:8]}@example.org"
    pid = _patient(notify, email=email, extension=[{"url": OPT_OUT, "valueBoolean": True}])
    appointment = notify.http.post("Appointment", json=_appointment(pid, datetime.now(UTC) + timedelta(days=4))).json()
    [communication] = _settled(notify, pid, 1)
    assert communication["status"] == "not-done" and "payload" not in communication
    assert communication["statusReason"]["coding"][0]["code"] == "opted-out"
    assert communication["reasonReference"] == [{"reference": f"Appointment/{appointment['id']}"}]
    assert _outbox(notify, communication["id"]) is None and notify.smtp.to(email) == []


def test_contact_preferences_rank_period_and_per_address_opt_out(notify: Notify) -> None:
    email, old_phone, phone = f"pref.{uuid.uuid4().hex[:8]}@example.org", _phone(), _phone()
    telecom = [{"system": "email", "value": email, "rank": 1, "extension": [{"url": OPT_OUT, "valueBoolean": True}]},
               {"system": "sms", "value": old_phone, "rank": 2, "period": {"end": "2020-01-01"}},
               {"system": "phone", "use": "home", "value": _phone(), "rank": 3},  # a landline: no SMS
               {"system": "sms", "value": phone, "rank": 4}]
    pid = _patient(notify, telecom=telecom)
    notify.http.post("Appointment", json=_appointment(pid, datetime.now(UTC) + timedelta(days=5)))
    [communication] = _settled(notify, pid, 1)
    assert communication["status"] == "completed"
    assert len(notify.sms.to(phone)) == 1 and notify.sms.to(old_phone) == [] and notify.smtp.to(email) == []
    assert notify.sms.to(phone)[0].body["message"].startswith("Dear Asha Verma, your appointment with Dr. Rao")

    unreachable = _patient(notify)  # no telecom at all
    notify.http.post("Appointment", json=_appointment(unreachable, datetime.now(UTC) + timedelta(days=5)))
    [none] = _settled(notify, unreachable, 1)
    assert none["status"] == "not-done" and none["statusReason"]["coding"][0]["code"] == "no-contact"


def test_reminder_is_recorded_once_per_appointment_and_start(notify: Notify) -> None:
    email = f"remind.{uuid.uuid4().hex[:8]}@example.org"
    pid = _patient(notify, email=email)
    start = datetime.now(UTC) + timedelta(hours=30)
    appointment = notify.http.post("Appointment", json=_appointment(pid, start)).json()
    far = notify.http.post("Appointment", json=_appointment(pid, start + timedelta(days=3))).json()
    wait_until(lambda: len(notify.smtp.to(email)) == 2, 20, "the two booked e-mails")
    later = datetime.now(UTC) + timedelta(hours=7)  # the check as it will run 23 h before the start
    assert due_reminders(notify.fhir, now=later) == 1
    assert due_reminders(notify.fhir, now=later + timedelta(minutes=5)) == 0  # idempotent
    wait_until(lambda: len(notify.smtp.to(email)) == 3, 20, "the reminder e-mail")
    assert notify.smtp.to(email)[-1]["Subject"] == "Appointment reminder"
    sent = _settled(notify, pid, 3)
    [reminder] = [c for c in sent if _event(c) == "appointment-reminder"]
    assert reminder["reasonReference"] == [{"reference": f"Appointment/{appointment['id']}"}]
    assert f"Appointment/{far['id']}" not in [c["reasonReference"][0]["reference"] for c in sent
                                              if _event(c) == "appointment-reminder"]
    # The periodic check runs by itself through the outbox, and re-schedules itself.
    first = _count_checks(notify)
    wait_until(lambda: _count_checks(notify) > first, 20, "the reminder check to run again")


def _count_checks(n: Notify) -> int:
    with n.backend.engine.connect() as conn:
        return len(conn.execute(select(OUTBOX.c.pk).where(OUTBOX.c.topic == CHECK_TOPIC,
                                                          OUTBOX.c.status == "done")).all())


def test_booked_inside_the_window_gets_no_separate_reminder(notify: Notify) -> None:
    email = f"soon.{uuid.uuid4().hex[:8]}@example.org"
    pid = _patient(notify, email=email)
    notify.http.post("Appointment", json=_appointment(pid, datetime.now(UTC) + timedelta(hours=5)))
    wait_until(lambda: len(notify.smtp.to(email)) == 1, 20, "the booked e-mail")
    assert due_reminders(notify.fhir) == 0


def test_a_failing_gateway_is_retried_until_it_recovers(notify: Notify) -> None:
    phone = _phone()
    notify.sms.failing[phone] = 2  # 503 twice, then 200 (max attempts 3)
    pid = _patient(notify, phone=phone)
    notify.http.post("Appointment", json=_appointment(pid, datetime.now(UTC) + timedelta(days=6)))
    [communication] = _settled(notify, pid, 1)
    assert communication["status"] == "completed"
    attempts = notify.sms.to(phone)
    assert len(attempts) == 3 and len({a.headers["idempotency-key"] for a in attempts}) == 1
    # The outbox row is finished after the handler's own commit (with the lane's other delivered rows).
    wait_until(lambda: _outbox(notify, communication["id"]).status == "done", 20, "the row to be finished")
    assert _outbox(notify, communication["id"]).attempts == 3


def test_dead_letter_after_max_attempts_without_pii_in_logs(notify: Notify, caplog: pytest.LogCaptureFixture) -> None:
    phone = _phone()
    notify.sms.failing[phone] = 1000
    caplog.set_level(logging.DEBUG)
    pid = _patient(notify, phone=phone, name=[{"given": ["Kavya"], "family": "Iyer"}])
    notify.http.post("Appointment", json=_appointment(pid, datetime.now(UTC) + timedelta(days=6)))
    [communication] = _settled(notify, pid, 1)
    assert communication["status"] == "not-done"
    assert communication["statusReason"]["coding"][0]["code"] == "delivery-failed"
    assert communication["statusReason"]["text"] == "SMS gateway answered 503"
    wait_until(lambda: _outbox(notify, communication["id"]).status == "dead", 20, "the dead letter")
    row = _outbox(notify, communication["id"])
    assert row.attempts == 3 and len(notify.sms.to(phone)) == 3 and phone not in (row.last_error or "")
    assert communication_id(communication["identifier"][0]["value"]) == communication["id"]
    logged = caplog.text
    assert communication["id"] in logged
    for pii in (phone, phone.replace("-", ""), "Kavya", "Iyer"):
        assert pii not in logged

    notify.sms.failing[phone] = 0  # the gateway is back; the operator retries the dead letter
    assert outbox_admin.retry(notify.backend.engine, row.pk) == 1
    [retried] = _settled(notify, pid, 1)
    wait_until(lambda: _communications(notify, pid)[0]["status"] == "completed", 20, "the retried send")
    assert len(notify.sms.to(phone)) == 4 and "statusReason" not in _communications(notify, pid)[0]
    assert retried["id"] == communication["id"]


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_smtp_over_starttls_and_implicit_tls_verifies_the_server(tmp_path: Path, security: str) -> None:
    ca_file, context = tls_files(tmp_path)
    sink, port = SmtpSink(), _free_port()
    sink.start(port, **({"tls_context": context, "require_starttls": True} if security == "starttls"
                        else {"ssl_context": context}))
    try:
        settings = Settings(notify_smtp_host="localhost", notify_smtp_port=port, notify_smtp_security=security,
                            notify_smtp_user=SMTP_USER, notify_smtp_password=SecretStr(SMTP_PASSWORD),
                            notify_smtp_ca_file=str(ca_file), notify_timeout_seconds=5)
        send_email(settings, "tls@example.org", "Appointment confirmed", "Dear A, confirmed.", "ntf-tls")
        [message] = sink.to("tls@example.org")
        assert message["Message-ID"] == "<ntf-tls@fhir-server>" and sink.logins == [SMTP_USER]
        untrusted = settings.model_copy(update={"notify_smtp_ca_file": None})  # the system's CAs: refused
        with pytest.raises(TransportError, match="SSLCertVerificationError"):
            send_email(untrusted, "tls@example.org", "x", "y", "ntf-tls-2")
        assert len(sink.to("tls@example.org")) == 1
    finally:
        sink.stop()


def test_a_receptionist_books_and_the_server_records_the_message_she_may_not_write(backend: Backend) -> None:
    """The message is the server's own record (as_system): a caller who may not write Communications still
    causes one, and cannot write one herself."""
    with contextmanager(smart_server)(backend, workflows="notifications", notify_sms_url="http://127.0.0.1:9/sms") \
            as smart:
        patient = smart.as_admin("POST", "Patient", json={
            "resourceType": "Patient", "name": [{"text": "Meera"}],
            "telecom": [{"system": "sms", "value": _phone()}]}).json()
        token = _user_token(smart, "receptionist", "user/*.cruds")["access_token"]
        forged = {"resourceType": "Communication", "status": "completed",
                  "subject": {"reference": f"Patient/{patient['id']}"}}
        assert smart.fhir("POST", "Communication", token, json=forged).status_code == 403
        booked = smart.fhir("POST", "Appointment", token, json={
            **_appointment(patient["id"], datetime.now(UTC) + timedelta(days=2)),
            "participant": [{"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"}]})
        assert booked.status_code == 201, booked.text
        found = smart.as_admin("GET", f"Communication?subject=Patient/{patient['id']}").json()
        [communication] = [e["resource"] for e in found["entry"]]
        assert communication["status"] == "preparation" and _event(communication) == "appointment-booked"
        assert communication["reasonReference"] == [{"reference": f"Appointment/{booked.json()['id']}"}]


def test_a_transaction_bundle_booking_a_patient_it_registers(notify: Notify) -> None:
    """The message is recorded as the transaction's last step: the Patient created after the Appointment
    that names it (in Bundle order) is there to be told."""
    phone = _phone()
    patient = {"resourceType": "Patient", "name": [{"text": "Ravi"}], "telecom": [{"system": "sms", "value": phone}]}
    appointment = _appointment("x", datetime.now(UTC) + timedelta(days=8))
    appointment["participant"][0]["actor"] = {"reference": "urn:uuid:7f1c2a3e-0d4b-4c6e-9a1f-3b5d7e9f1a2c"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment, "request": {"method": "POST", "url": "Appointment"}},
        {"fullUrl": "urn:uuid:7f1c2a3e-0d4b-4c6e-9a1f-3b5d7e9f1a2c", "resource": patient,
         "request": {"method": "POST", "url": "Patient"}}]}
    response = notify.http.post("", json=bundle)
    assert response.status_code == 200, response.text
    pid = response.json()["entry"][1]["response"]["location"].split("/")[1]
    [communication] = _settled(notify, pid, 1)
    assert communication["status"] == "completed" and len(notify.sms.to(phone)) == 1
    assert "Dear Ravi" in notify.sms.to(phone)[0].body["message"]


def test_concurrent_reminder_checks_record_one_reminder(notify: Notify) -> None:
    """Several workers running the check at once: the database serialises writers of one key (PostgreSQL
    advisory lock; SQLite's single writer), so exactly one reminder is recorded."""
    if notify.backend.name != "postgresql":
        pytest.skip("concurrency with real threads runs on PostgreSQL")
    email = f"race.{uuid.uuid4().hex[:8]}@example.org"
    pid = _patient(notify, email=email)
    notify.http.post("Appointment", json=_appointment(pid, datetime.now(UTC) + timedelta(hours=30)))
    later = datetime.now(UTC) + timedelta(hours=7)
    made: list[int] = []
    barrier = threading.Barrier(6)

    def check() -> None:
        barrier.wait()
        made.append(due_reminders(notify.fhir, now=later))

    threads = [threading.Thread(target=check) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(made) == 1 and len(made) == 6
    sent = _settled(notify, pid, 2)
    assert sorted(_event(c) for c in sent) == ["appointment-booked", "appointment-reminder"]
    wait_until(lambda: len(notify.smtp.to(email)) == 2, 20, "booked and reminder e-mails")


def test_an_opt_out_after_the_booking_stops_the_retries(notify: Notify) -> None:
    phone = _phone()
    notify.sms.failing[phone] = 1000
    pid = _patient(notify, phone=phone)
    notify.http.post("Appointment", json=_appointment(pid, datetime.now(UTC) + timedelta(days=9)))
    [communication] = _settled(notify, pid, 1)
    wait_until(lambda: _outbox(notify, communication["id"]).status == "dead", 20, "the dead letter")
    patient = notify.http.get(f"Patient/{pid}").json()
    opted = {**patient, "extension": [{"url": OPT_OUT, "valueBoolean": True}]}
    assert notify.http.put(f"Patient/{pid}", json=opted).status_code == 200
    notify.sms.failing[phone] = 0
    assert outbox_admin.retry(notify.backend.engine, _outbox(notify, communication["id"]).pk) == 1
    wait_until(lambda: _outbox(notify, communication["id"]).status == "done", 20, "the retried row")
    [stopped] = _communications(notify, pid)
    assert stopped["status"] == "not-done" and stopped["statusReason"]["coding"][0]["code"] == "opted-out"
    assert len(notify.sms.to(phone)) == 3  # the three failed attempts; nothing once opted out
