"""The ABDM simulator in its own process, and a hospital server (HIP + HIU) wired to it, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fhir_server.app import create_app
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.outbox import OutboxDispatcher
from interfaces.abdm.identity import ABHA_ADDRESS_SYSTEM, ABHA_NUMBER_SYSTEM
from interfaces.abdm.settings import AbdmSettings, configure
from tests.conftest import (
    PROCESS_START_TIMEOUT,
    SYSTEM,
    Backend,
    _free_port,
    make_backend,
    shared_dir,
    uvicorn_config,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
DISCOVER = "/api/v3/hip/patient/care-context/discover"
LINK_INIT = "/api/v3/hip/link/care-context/init"
LINK_CONFIRM = "/api/v3/hip/link/care-context/confirm"
NOTIFY = "/data-flow/v3/health-information/notify"
HIP_ID = "HOSP-HIP-1"
HIU_ID = "HOSP-HIU-1"


@dataclass
class Simulator:
    url: str
    http: httpx.Client

    def log(self, path: str) -> list[dict[str, Any]]:
        return list(self.http.get("/sim/log", params={"path": path}).json())

    def answer(self, path: str, request_id: str, timeout: float = 20) -> dict[str, Any]:
        """The callback our server sent to ``path`` answering ``request_id`` (polled with a deadline)."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            found[:] = [e for e in self.log(path) if e["body"].get("response", {}).get("requestId") == request_id]
            return bool(found)

        try:
            wait_until(arrived, timeout, f"a callback to {path} answering {request_id}")
        except AssertionError:
            raise AssertionError(f"no callback to {path} answering {request_id}; outbox: {outbox()}") from None
        return found[0]

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(path, json=body)
        resp.raise_for_status()
        return dict(resp.json())


def start_simulator() -> Iterator[Simulator]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.abdm.sandbox", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:  # the process is stopped whatever happens, its start failing included
        with httpx.Client(base_url=url, timeout=30) as http:
            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"the simulator exited: {proc.stderr.read() if proc.stderr else ''}")
                try:
                    return http.get("/gateway/v3/certs").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, PROCESS_START_TIMEOUT, "the ABDM simulator to start")
            yield Simulator(url, http)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


ENGINES: list[Any] = []  # the running hospital's engine, for failure messages


def outbox() -> list[tuple[str, str, int, str | None]]:
    from fhir_server.jobs import outbox_admin

    return [(r["key"][:60], r["status"], r["attempts"], r["lastError"])
            for e in ENGINES for r in outbox_admin.list_rows(e, None, 15)["rows"]]


@dataclass
class Hospital:
    url: str  # http://127.0.0.1:port
    abdm_url: str  # url + /abdm
    fhir: FhirServer
    http: httpx.Client
    admin: dict[str, str]  # headers of an admin user's token: the staff endpoints need one

    def create(self, resource: dict[str, Any]) -> str:
        resp = self.fhir.handle(FhirRequest("POST", resource["resourceType"], resource=resource,
                                            headers={"content-type": "application/fhir+json"},
                                            access=as_system("test data")))
        assert resp.status == 201, resp.resource
        assert resp.resource is not None
        return str(resp.resource["id"])

    def read(self, path: str, query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        resp = self.fhir.handle(FhirRequest("GET", path, query=query or [], access=as_system("test check")))
        assert resp.status == 200, resp.resource
        assert resp.resource is not None
        return resp.resource


def start_hospital(backend: Backend, sim: Simulator, *, install_ig: bool = True,
                   port: int | None = None, workflows: str = "") -> Iterator[Hospital]:
    """A hospital server on ``backend`` (a fresh FhirServer, app and outbox dispatcher each time: starting it
    again on the same backend and port is a restart). Whatever fails before the yield, the server it started
    is stopped."""
    settings = backend.settings.model_copy(update={"audit_enabled": True, "workflows": workflows,
                                                   "outbox_dispatcher": True, "outbox_poll_seconds": 0.1})
    fhir = FhirServer(settings, backend.engine)
    ENGINES[:] = [backend.engine]
    port = port or _free_port()
    configure(fhir, AbdmSettings(gateway_url=sim.url, client_id="hospital", client_secret="secret",
                                 hip_id=HIP_ID, hip_name="Test Hospital", hiu_id=HIU_ID,
                                 public_url=f"http://127.0.0.1:{port}", otp_webhook_url=sim.url + "/sim/sms",
                                 mr_system="https://hospital.example/mrn"))
    dispatcher = OutboxDispatcher(fhir.engine, lease=timedelta(seconds=30), backoff_base=0.2)
    app = create_app(settings, fhir, dispatcher)
    if install_ig:
        from fhir_server.packages.install import install, read_package

        install(fhir, read_package(shared_dir() / "india" / "ndhm.in-6.5.0"),
                access=SYSTEM)
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 20, "uvicorn to start")
        assert server.started, "the hospital server did not start"
        url = f"http://127.0.0.1:{port}"
        sim.post("/sim/config", {"hipUrl": url + "/abdm", "hiuUrl": url + "/abdm"})
        with httpx.Client(base_url=url, timeout=60) as http:
            from fhir_server.auth.store import AuthStore
            from tests.integration.test_auth_support import Smart
            from tests.integration.test_hl7_admin import user_token

            smart = Smart(url, url + "/fhir", http, AuthStore(backend.engine), app.state.auth, backend)
            admin = {"Authorization": f"Bearer {user_token(smart, 'admin')}"}
            yield Hospital(url, url + "/abdm", fhir, http, admin)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        if fhir.audit is not None:
            fhir.audit.recorder.close()


def hospital_on(backend_name: str, sim: Simulator, tmp_path_factory: pytest.TempPathFactory, *,
                workflows: str = "") -> Iterator[Hospital]:
    for backend in make_backend(backend_name, tmp_path_factory.mktemp(f"abdm-{backend_name}")):
        yield from start_hospital(backend, sim, workflows=workflows)


def visit_data(h: Hospital, address: str | None = None) -> dict[str, Any]:
    """A patient with two visits: E1 in March 2024 (diagnosis, vitals, prescription, lab report) and E2 in
    2022 (a diagnosis), and a standalone lab report in 2024."""
    handle = f"hina{uuid.uuid4().hex[:8]}"
    identifiers = [{"system": ABHA_NUMBER_SYSTEM, "value": f"91-{uuid.uuid4().int % 10**4:04d}-1234-5678"}]
    if address:
        identifiers.append({"system": ABHA_ADDRESS_SYSTEM, "value": address})
    pid = h.create({"resourceType": "Patient", "identifier": identifiers, "name": [{"text": f"Hina {handle}"}],
                    "gender": "female", "birthDate": "1979-03-02", "telecom": [{"system": "phone",
                                                                                "value": "+919800083232"}]})
    subject = {"reference": f"Patient/{pid}"}
    e1 = h.create({"resourceType": "Encounter", "status": "finished", "class": {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject,
        "type": [{"text": "General OPD"}], "period": {"start": "2024-03-01T10:00:00+05:30"}})
    e2 = h.create({"resourceType": "Encounter", "status": "finished", "class": {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject,
        "period": {"start": "2022-06-01T10:00:00+05:30"}})
    ref1, ref2 = {"reference": f"Encounter/{e1}"}, {"reference": f"Encounter/{e2}"}
    doctor = h.create({"resourceType": "Practitioner", "name": [{"prefix": ["Dr."], "given": ["Manju"]}],
                       "identifier": [{"system": "https://doctor.ndhm.gov.in", "value": "21-1521-3828-3227"}]})
    h.create({"resourceType": "Condition", "subject": subject, "encounter": ref1, "code": {"text": "Fever"},
              "recordedDate": "2024-03-01"})
    h.create({"resourceType": "Observation", "status": "final", "subject": subject, "encounter": ref1,
              "code": {"text": "Body temperature"}, "effectiveDateTime": "2024-03-01T10:10:00+05:30",
              "valueQuantity": {"value": 38.5, "unit": "Cel"}})
    h.create({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject,
              "encounter": ref1, "medicationCodeableConcept": {"text": "Paracetamol 500 mg"},
              "authoredOn": "2024-03-01", "requester": {"reference": f"Practitioner/{doctor}"},
              "dosageInstruction": [{"text": "One tablet three times a day"}]})
    h.create({"resourceType": "DiagnosticReport", "status": "final", "subject": subject, "encounter": ref1,
              "code": {"text": "CBC"}, "effectiveDateTime": "2024-03-01T11:00:00+05:30"})
    h.create({"resourceType": "Immunization", "status": "completed", "patient": subject, "encounter": ref1,
              "vaccineCode": {"coding": [{"system": "http://snomed.info/sct", "code": "1119305005",
                                          "display": "COVID-19 antigen vaccine"}]},
              "occurrenceDateTime": "2024-03-01T10:30:00+05:30", "lotNumber": "B-1234"})
    h.create({"resourceType": "Condition", "subject": subject, "encounter": ref2, "code": {"text": "Old cough"},
              "recordedDate": "2022-06-01"})
    cholesterol = h.create({"resourceType": "Observation", "status": "final", "subject": subject,
                            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                "observation-category", "code": "laboratory"}]}],
                            "code": {"coding": [{"system": "http://loinc.org", "code": "2093-3",
                                                 "display": "Cholesterol [Mass/volume] in Serum or Plasma"}]},
                            "effectiveDateTime": "2024-04-01T09:00:00+05:30",
                            "valueQuantity": {"value": 156, "unit": "mg/dL"}})
    dr = h.create({"resourceType": "DiagnosticReport", "status": "final", "subject": subject,
                   "code": {"coding": [{"system": "http://loinc.org", "code": "24331-1",
                                        "display": "Lipid panel - Serum or Plasma"}], "text": "Lipid profile"},
                   "effectiveDateTime": "2024-04-01T09:00:00+05:30",
                   "resultsInterpreter": [{"reference": f"Practitioner/{doctor}"}],
                   "result": [{"reference": f"Observation/{cholesterol}"}], "conclusion": "Normal lipid profile"})
    return {"address": address, "patient": pid, "e1": f"Encounter/{e1}", "e2": f"Encounter/{e2}",
            "dr": f"DiagnosticReport/{dr}", "name": f"Hina {handle}", "handle": handle}


def grant(sim: Simulator, data: dict[str, Any], hi_types: list[str], **extra: Any) -> str:
    spec = {"patientReference": f"Patient/{data['patient']}", "careContexts": [data["e1"], data["e2"], data["dr"]],
            "hiTypes": hi_types, "from": "2024-01-01T00:00:00.000Z", "to": "2024-12-31T00:00:00.000Z",
            "dataEraseAt": (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "abhaAddress": f"{data['handle']}@sbx", "hipId": HIP_ID, **extra}
    result = sim.post("/sim/consent/grant", spec)
    assert result["status"] == 202
    ack = sim.answer("/consent/v3/request/hip/on-notify", result["requestId"])
    assert ack["body"]["acknowledgement"] == {"status": "OK", "consentId": result["consentId"]}
    assert ack["headers"]["x-hip-id"] == HIP_ID
    return str(result["consentId"])


def request_data(sim: Simulator, consent: str, **extra: Any) -> dict[str, Any]:
    result = sim.post("/sim/hiu/request", {"consentId": consent, "from": "2024-01-01T00:00:00.000Z",
                                           "to": "2024-12-31T00:00:00.000Z", "hipId": HIP_ID, **extra})
    assert result["status"] == 202
    return result


def transfer_notice(sim: Simulator, txn: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        found[:] = [e for e in sim.log(NOTIFY) if e["body"]["notification"]["transactionId"] == txn]
        return bool(found)

    try:
        wait_until(arrived, 30, "the transfer notification")
    except AssertionError:
        raise AssertionError(f"no transfer notification; outbox: {outbox()}") from None
    return found[0]["body"]["notification"]
