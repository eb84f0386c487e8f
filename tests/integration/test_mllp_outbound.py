"""Orders out: a ServiceRequest for an MLLP lab becomes ORM^O01 through the outbox, ACK tracked on the order."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import OutboxDispatcher
from interfaces.mllp.framing import MllpDecoder, encode
from interfaces.mllp.outbound import ACK_EXTENSION, TOPIC, OrderSender
from mappings.hl7v2.message import parse
from tests.conftest import LiveServer, _free_port, wait_until


class FakeLab:
    """A lab system on loopback: records each message and answers with ``answer`` (AA, AE, or silence)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[str] = []
        self.answer = "AA"
        self.sock = socket.create_server(("127.0.0.1", port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                decoder = MllpDecoder()
                frames: list[Any] = []
                while not frames:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    frames = decoder.feed(chunk)
                for frame in frames:
                    text = frame.decode()
                    self.received.append(text)
                    control = parse(text).msh.get(10)
                    conn.sendall(encode(f"MSH|^~\\&|LIS|LAB|||20240101||ACK^O01^ACK|L1|P|2.5\r"
                                        f"MSA|{self.answer}|{control}|\r".encode()))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def lab() -> Iterator[FakeLab]:
    fake = FakeLab(_free_port())
    yield fake
    fake.close()


def _setup(api: LiveServer, address: str) -> dict[str, Any]:
    endpoint = api.http.post("Endpoint", json={
        "resourceType": "Endpoint", "status": "active", "address": address,
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "hl7v2-mllp"},
        "payloadType": [{"text": "ORM^O01"}]}).json()
    org = api.http.post("Organization", json={"resourceType": "Organization", "name": "City Lab",
                                              "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}]}).json()
    patient = api.http.post("Patient", json={
        "resourceType": "Patient", "name": [{"family": "Rao", "given": ["Meera"]}], "gender": "female",
        "identifier": [{"system": "urn:fhir-server:hl7v2:authority:HOSP", "value": "MRN-9"}]}).json()
    return {"org": org, "patient": patient}


def _order(api: LiveServer, refs: dict[str, Any], status: str = "active") -> dict[str, Any]:
    response = api.http.post("ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": status, "intent": "order", "priority": "stat",
        "identifier": [{"value": "ORD-42", "type": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]}}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{refs['patient']['id']}"},
        "performer": [{"reference": f"Organization/{refs['org']['id']}"}],
        "note": [{"text": "Fasting"}]})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _outbox(api: LiveServer) -> list[Any]:
    with api.backend.engine.connect() as conn:
        return list(conn.execute(select(OUTBOX).where(OUTBOX.c.topic == TOPIC).order_by(OUTBOX.c.pk)).all())


def _dispatcher(api: LiveServer) -> OutboxDispatcher:
    dispatcher = OutboxDispatcher(api.backend.engine, backoff_base=0.01)
    dispatcher.register(TOPIC, OrderSender(api.fhir, timeout=5))
    return dispatcher


def test_an_order_for_an_mllp_lab_goes_out_as_orm_and_its_ack_is_recorded(api: LiveServer, lab: FakeLab) -> None:
    refs = _setup(api, f"mllp://127.0.0.1:{lab.port}")
    order = _order(api, refs)
    [row] = _outbox(api)
    assert row.key == f"ServiceRequest/{order['id']}/_history/1" and row.status == "pending"
    assert _dispatcher(api).run_once() == 1
    [message] = lab.received
    msg = parse(message)
    assert msg.msh.get(9) == "ORM" and msg.msh.get(9, comp=2) == "O01" and msg.msh.get(10) == f"{order['id']}-1"
    assert msg.first("PID").get(3) == "MRN-9" and msg.first("PID").get(3, comp=4) == "HOSP"  # type: ignore[union-attr]
    assert msg.first("PID").get(5, comp=2) == "Meera" and msg.first("PID").get(8) == "F"  # type: ignore[union-attr]
    orc = msg.first("ORC")  # we are the placer: ORC-2 is our ServiceRequest id in our namespace
    assert orc is not None and orc.get(1) == "NW" and orc.get(2) == order["id"] and orc.get(2, comp=2) == "FHIR-SERVER"
    obr = msg.first("OBR")
    assert obr is not None and obr.get(4) == "2345-7" and obr.get(4, comp=3) == "LN" and obr.get(5) == "S"
    assert msg.first("NTE").get(3) == "Fasting"  # type: ignore[union-attr]
    stored = api.http.get(f"ServiceRequest/{order['id']}").json()
    [ack] = [e for e in stored["extension"] if e["url"] == ACK_EXTENSION]
    assert {"url": "code", "valueCode": "AA"} in ack["extension"]
    assert stored["meta"]["versionId"] == "2"
    assert len(_outbox(api)) == 1  # recording the ACK is not an order change: nothing new to send

    cancelled = {**stored, "status": "revoked"}
    assert api.http.put(f"ServiceRequest/{order['id']}", json=cancelled).status_code == 200
    assert _dispatcher(api).run_once() == 1
    assert parse(lab.received[-1]).first("ORC").get(1) == "CA"  # type: ignore[union-attr]


def test_a_lab_that_is_down_is_retried_with_backoff(api: LiveServer) -> None:
    port = _free_port()  # nobody listens yet
    refs = _setup(api, f"mllp://127.0.0.1:{port}")
    order = _order(api, refs)
    dispatcher = _dispatcher(api)
    assert dispatcher.run_once() == 0
    [row] = _outbox(api)
    assert row.status == "pending" and row.attempts == 1 and row.last_error
    lab = FakeLab(port)
    try:
        wait_until(lambda: dispatcher.run_once() == 1, 20, "delivery once the lab is up")
        assert len(lab.received) == 1
    finally:
        lab.close()
    assert _outbox(api)[0].status == "done"
    assert api.http.get(f"ServiceRequest/{order['id']}").json()["extension"][0]["url"] == ACK_EXTENSION


def test_an_application_error_from_the_lab_is_recorded_not_retried(api: LiveServer, lab: FakeLab) -> None:
    lab.answer = "AE"
    refs = _setup(api, f"mllp://127.0.0.1:{lab.port}")
    order = _order(api, refs)
    assert _dispatcher(api).run_once() == 1
    assert _outbox(api)[0].status == "done"
    ack = api.http.get(f"ServiceRequest/{order['id']}").json()["extension"][0]
    assert {"url": "code", "valueCode": "AE"} in ack["extension"]


def test_orders_without_an_mllp_endpoint_or_not_active_send_nothing(api: LiveServer, lab: FakeLab) -> None:
    refs = _setup(api, f"mllp://127.0.0.1:{lab.port}")
    _order(api, refs, status="draft")
    plain = api.http.post("Organization", json={"resourceType": "Organization", "name": "No endpoint"}).json()
    _order(api, {**refs, "org": plain})
    assert _outbox(api) == []


def test_results_for_our_own_order_link_back_to_it(api: LiveServer, lab: FakeLab) -> None:
    """Closed loop: order out as ORM (placer number = our ServiceRequest id), ORU back names it in OBR-2."""
    from interfaces.mllp.pipeline import Hl7Pipeline
    from interfaces.mllp.store import MessageStore

    refs = _setup(api, f"mllp://127.0.0.1:{lab.port}")
    order = _order(api, refs)
    assert _dispatcher(api).run_once() == 1
    placer = parse(lab.received[0]).first("ORC").get(2)  # type: ignore[union-attr]
    assert placer == order["id"]
    oru = "\r".join([
        "MSH|^~\\&|LIS|LAB|FHIR-SERVER|HOSPITAL|20240305101500||ORU^R01^ORU_R01|R-1|P|2.5.1",
        "PID|1||MRN-9^^^HOSP^MR||Rao^Meera||19800101|F",
        f"OBR|1|{order['id']}^FHIR-SERVER|F-9^LAB|2345-7^Glucose^LN|||20240305093000|||||||||||||||20240305101000||CH|F",
        "OBX|1|NM|2345-7^Glucose^LN||99|mg/dL|70-105|N|||F"]) + "\r"
    [ack] = Hl7Pipeline(api.fhir, MessageStore(api.backend.engine)).handle(oru.encode())
    assert "MSA|AA|R-1" in ack
    report = api.http.get("DiagnosticReport").json()["entry"][0]["resource"]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert api.http.get("ServiceRequest", params={"_summary": "count"}).json()["total"] == 1  # no duplicate
    patients = api.http.get("Patient", params={"_summary": "count"}).json()["total"]
    assert patients == 1  # PID-3 MRN-9 from authority HOSP is the registered patient's identifier: matched


def test_an_order_for_an_analyser_device_goes_out_as_oml_o33(api: LiveServer, lab: FakeLab) -> None:
    refs = _setup(api, f"mllp://127.0.0.1:{lab.port}")
    endpoint = refs["org"]["endpoint"][0]["reference"]
    location = api.http.post("Location", json={"resourceType": "Location", "name": "Chemistry bench",
                                                "endpoint": [{"reference": endpoint}]}).json()
    device = api.http.post("Device", json={"resourceType": "Device", "deviceName": [
        {"name": "Chemistry analyser", "type": "user-friendly-name"}],
        "location": {"reference": f"Location/{location['id']}"}}).json()
    specimen = api.http.post("Specimen", json={
        "resourceType": "Specimen", "identifier": [{"value": "TUBE-0042"}],
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0487", "code": "SER"}]},
        "subject": {"reference": f"Patient/{refs['patient']['id']}"}}).json()
    response = api.http.post("ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{refs['patient']['id']}"},
        "performer": [{"reference": f"Device/{device['id']}"}],
        "specimen": [{"reference": f"Specimen/{specimen['id']}"}]})
    assert response.status_code == 201, response.text
    order = response.json()
    assert _dispatcher(api).run_once() == 1
    [message] = lab.received
    msg = parse(message)
    assert (msg.msh.get(9), msg.msh.get(9, comp=2), msg.msh.get(12)) == ("OML", "O33", "2.5.1")
    spm = msg.first("SPM")
    assert spm is not None and spm.get(2) == "TUBE-0042" and spm.get(4) == "SER"
    obr = msg.first("OBR")
    assert obr is not None and obr.get(2) == order["id"] and obr.get(4) == "2345-7"
    ack = api.http.get(f"ServiceRequest/{order['id']}").json()["extension"][0]
    assert ack["url"] == ACK_EXTENSION and ack["extension"][0]["valueCode"] == "AA"
