"""The claims test rig: the HCX sandbox in its own process, our server configured for it on a real port,
its outbox dispatcher running (fast backoff), and a hospital's records to claim for."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from fhir_server.app import create_app
from fhir_server.packages.install import install, read_package
from fhir_server.rest.server import FhirServer
from fhir_server.storage.outbox import OutboxDispatcher
from interfaces.claims import keys
from tests.conftest import Backend, _free_port, wait_until

PROVIDER = "hospital01@sandbox"
PAYER = "payer01@sandbox"
PAYER2 = "payer02@sandbox"
GATEWAY = "hcx-gateway@sandbox"
CODE_SYSTEM = "https://hcxprotocol.io/participant_code"
IG = Path("/work/shared/india/ndhm.in-6.5.0")  # the NRCeS "FHIR IG for ABDM" package (shared/README.md)


@dataclass
class Sandbox:
    url: str
    process: subprocess.Popen[bytes]
    http: httpx.Client

    def script(self, *behaviours: dict[str, Any]) -> None:
        self.http.post("/_control/behaviours", json=list(behaviours)).raise_for_status()

    def received(self) -> dict[str, Any]:
        return dict(self.http.get("/_control/received").json())

    def send(self, **body: Any) -> dict[str, Any]:
        resp = self.http.post("/_control/send", json=body)
        resp.raise_for_status()
        return dict(resp.json())


def start_sandbox(tmp: Path) -> Iterator[Sandbox]:
    port = _free_port()
    log = (tmp / "sandbox.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.claims.sandbox", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2],
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=30)

    def up() -> bool:
        try:
            return http.get("/_control/health").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 90, "the HCX sandbox to start")
        yield Sandbox(url, proc, http)
    finally:
        http.close()
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@dataclass
class ClaimsServer:
    url: str  # FHIR base
    fhir: FhirServer
    http: httpx.Client
    sandbox: Sandbox
    dispatcher: OutboxDispatcher

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        resp = self.http.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def search(self, rtype: str, **params: Any) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.get(rtype, **params).get("entry", [])
                if e.get("search", {}).get("mode") == "match"]


def start_claims_server(backend: Backend, sandbox: Sandbox, tmp: Path) -> Iterator[ClaimsServer]:
    port = _free_port()
    private_pem, cert_pem = keys.generate(PROVIDER)
    key_file = tmp / "provider-key.pem"
    key_file.write_text(private_pem)
    sandbox.http.post("/_control/participants", json={
        "participant_code": PROVIDER, "participant_name": "Hospital 01", "roles": ["provider"],
        "endpoint_url": f"http://127.0.0.1:{port}/hcx", "encryption_cert": cert_pem}).raise_for_status()
    settings = backend.settings.model_copy(update={
        "claims_gateway_url": sandbox.url, "claims_participant_code": PROVIDER, "claims_gateway_code": GATEWAY,
        "claims_private_key": str(key_file), "claims_username": "billing@hospital01",
        "claims_secret": SecretStr("s3cret"), "claims_max_attempts": 3})
    fhir = FhirServer(settings, backend.engine)
    dispatcher = OutboxDispatcher(backend.engine, lease=timedelta(seconds=30), backoff_base=0.05)
    app = create_app(settings, fhir, dispatcher)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "uvicorn to start")
    dispatcher.start(poll_seconds=0.05)
    install(fhir, read_package(IG))  # payloads are validated against NRCeS 6.5.0 before they leave
    base = f"http://127.0.0.1:{port}/fhir"
    with httpx.Client(base_url=base + "/", timeout=60, headers={"Accept": "application/fhir+json"}) as http:
        yield ClaimsServer(base, fhir, http, sandbox, dispatcher)
    dispatcher.stop()
    with backend.engine.connect() as conn:  # what failed, for the reader of a failed run
        for row in conn.exec_driver_sql("SELECT topic, status, last_error FROM outbox WHERE last_error IS NOT NULL"):
            print("outbox:", row[0], row[1], (row[2] or "")[:300])
    server.should_exit = True
    thread.join(timeout=20)


NDHM_ID = "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-identifier-type-code"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _identifier(system: str, value: str, type_system: str, code: str, display: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": type_system, "code": code, "display": display}]}, "system": system,
            "value": value}


def org(rid: str, name: str, code: str | None = None) -> dict[str, Any]:
    """An Organization as NRCeS wants it (typed identifiers); a payer also carries its participant code."""
    ids = [_identifier("https://facility.ndhm.gov.in", f"F-{rid}", V2_0203, "PRN", "Provider number")]
    if code:
        ids = [_identifier(CODE_SYSTEM, code, NDHM_ID, "ROHINI", "Registry of Hospitals in Network of Insurance "
                                                                "(ROHINI) ID")]
    return {"resourceType": "Organization", "id": rid, "name": name, "active": True, "identifier": ids}


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def records(suffix: str) -> list[dict[str, Any]]:
    """A patient with cover, an admission, a document, a pre-authorisation and a claim (all conforming to the
    NRCeS 6.5.0 profiles) -- and another patient's admission next to them, which must never leave."""
    pid, other = f"pat-{suffix}", f"other-{suffix}"
    abha = ("https://healthid.abdm.gov.in", NDHM_ID, "ABHA", "Ayushman Bharat Health Account (ABHA) ID")
    patient = {"resourceType": "Patient", "id": pid, "name": [{"text": "Asha Sharma", "family": "Sharma"}],
               "gender": "female", "birthDate": "1980-04-02",
               "identifier": [_identifier(abha[0], "91-1234-5678-9012", *abha[1:])]}
    bystander = {"resourceType": "Patient", "id": other, "name": [{"text": "Ravi Bystander"}],
                 "identifier": [_identifier(abha[0], "91-9999-8888-7777", *abha[1:])]}
    doctor = {"resourceType": "Practitioner", "id": f"dr-{suffix}", "name": [{"text": "Dr. Meera Rao"}],
              "identifier": [_identifier("https://doctor.ndhm.gov.in", "21-1521-3828-3227", V2_0203, "MD",
                                         "Medical License number")]}
    ward = {"resourceType": "Location", "id": f"ward-{suffix}", "status": "active", "name": "Surgical ward"}
    coverage = {"resourceType": "Coverage", "id": f"cov-{suffix}", "status": "active",
                "identifier": [{"system": "https://payer01.example/policy", "value": "POL-778899"}],
                "type": _coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP",
                                "health insurance plan policy"),
                "subscriber": {"reference": f"Patient/{pid}"}, "subscriberId": "POL-778899",
                "beneficiary": {"reference": f"Patient/{pid}"},
                "payor": [{"reference": f"Organization/payer-{suffix}"}],
                "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                             "code": "self"}]}}
    encounter = {"resourceType": "Encounter", "id": f"enc-{suffix}", "status": "in-progress",
                 "identifier": [{"system": "https://hospital01.example/encounter", "value": f"IP-{suffix}"}],
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                           "display": "inpatient encounter"},
                 "subject": {"reference": f"Patient/{pid}"}}
    other_encounter = {"resourceType": "Encounter", "id": f"enc-other-{suffix}", "status": "finished",
                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                       "subject": {"reference": f"Patient/{other}"}}
    document = {"resourceType": "DocumentReference", "id": f"doc-{suffix}", "status": "current",
                "subject": {"reference": f"Patient/{pid}"},
                "type": _coding("http://snomed.info/sct", "4241000179101", "Laboratory report"),
                "content": [{"attachment": {"contentType": "text/plain", "title": "Admission note",
                                            "data": "QWRtaXR0ZWQgZm9yIGFwcGVuZGljaXRpcw=="}}]}
    priority = _coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal")
    eligibility = {"resourceType": "CoverageEligibilityRequest", "id": f"cer-{suffix}", "status": "active",
                   "identifier": [{"value": f"CER-{suffix}"}], "priority": priority,
                   "purpose": ["validation"], "patient": {"reference": f"Patient/{pid}"}, "created": "2026-12-07",
                   "enterer": {"reference": f"Practitioner/dr-{suffix}"},
                   "facility": {"reference": f"Location/ward-{suffix}"},
                   "insurer": {"reference": f"Organization/payer-{suffix}"},
                   "provider": {"reference": f"Organization/hosp-{suffix}"},
                   "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/cov-{suffix}"}}]}

    def claim(cid: str, use: str, amount: float) -> dict[str, Any]:
        return {"resourceType": "Claim", "id": cid, "status": "active", "use": use,
                "identifier": [{"system": "https://hospital01.example/claim", "value": cid}],
                "type": _coding("http://terminology.hl7.org/CodeSystem/claim-type", "institutional", "Institutional"),
                "patient": {"reference": f"Patient/{pid}"}, "created": "2026-12-07",
                "insurer": {"reference": f"Organization/payer-{suffix}"},
                "provider": {"reference": f"Organization/hosp-{suffix}"}, "priority": priority,
                "diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": _coding(
                    "http://hl7.org/fhir/sid/icd-10", "K35.8", "Acute appendicitis, other and unspecified"),
                    "type": [_coding("http://snomed.info/sct", "89100005", "Final diagnosis (discharge)")]}],
                "supportingInfo": [{"sequence": 1, "category": _coding(
                    "http://terminology.hl7.org/CodeSystem/claiminformationcategory", "attachment", "Attachment"),
                    "code": _coding("http://snomed.info/sct", "371530004", "Clinical consultation report"),
                    "valueReference": {"reference": f"DocumentReference/doc-{suffix}"}}],
                "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/cov-{suffix}"}}],
                "item": [{"sequence": 1, "productOrService": _coding("http://snomed.info/sct", "80146002",
                                                                     "Appendectomy"),
                          "encounter": [{"reference": f"Encounter/enc-{suffix}"}],
                          "net": {"value": amount, "currency": "INR"}}],
                "total": {"value": amount, "currency": "INR"}}

    return [org(f"payer-{suffix}", "Payer One", PAYER), org(f"hosp-{suffix}", "Hospital One"), patient, bystander,
            doctor, ward, coverage, encounter, other_encounter, document, eligibility,
            claim(f"pre-{suffix}", "preauthorization", 85000.0), claim(f"final-{suffix}", "claim", 82500.0)]


def store(server: ClaimsServer, resources: list[dict[str, Any]]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
    resp = server.http.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 200, resp.text
