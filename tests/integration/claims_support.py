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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from fhir_server.app import create_app
from fhir_server.packages.install import install, read_package
from fhir_server.rest.server import FhirServer
from fhir_server.storage.outbox import OutboxDispatcher
from interfaces.claims import keys
from interfaces.claims.payers import Payers
from interfaces.claims.sandbox.records import PAYER, PROVIDER, records

__all__ = ["PAYER", "PAYER2", "PROVIDER", "records"]
from tests.conftest import PROCESS_START_TIMEOUT, SYSTEM, Backend, _free_port, shared_dir, uvicorn_config, wait_until

PAYER2 = "payer02@sandbox"
SMART_CLIENT = "hospital01-backend"
GATEWAY = "hcx-gateway@sandbox"
# The NRCeS "FHIR IG for ABDM" package, in ../shared beside the checkout (shared/README.md).
IG = shared_dir() / "india" / "ndhm.in-6.5.0"


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


def start_sandbox(tmp: Path, flavour: str = "hcx") -> Iterator[Sandbox]:
    port = _free_port()
    log = (tmp / "sandbox.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.claims.sandbox", "--port", str(port),
                             "--flavour", flavour],
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2],
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=30)

    def up() -> bool:
        if proc.poll() is not None:  # it died (a port taken meanwhile, an import error): say why at once
            raise AssertionError("the HCX sandbox exited: " + (tmp / "sandbox.log").read_text()[-2000:])
        try:
            return http.get("/_control/health").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, PROCESS_START_TIMEOUT, "the HCX sandbox to start")
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
    root: str = ""  # where our non-FHIR endpoints are (the callbacks: {root}/hcx)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        resp = self.http.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def search(self, rtype: str, **params: Any) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.get(rtype, **params).get("entry", [])
                if e.get("search", {}).get("mode") == "match"]


def smart_key(kind: str = "EC") -> str:
    """A SMART backend client key: EC P-384 (ES384) or RSA 2048 (RS384), PEM."""
    key = ec.generate_private_key(ec.SECP384R1()) if kind == "EC" else rsa.generate_private_key(65537, 2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def start_claims_server(backend: Backend, sandbox: Sandbox, tmp: Path, *, flavour: str = "hcx",
                        ig: bool = True) -> Iterator[ClaimsServer]:
    """Our server for the sandbox; on a tenant's backend, that hospital's (its callbacks are ``/t/{tenant}/hcx``).
    Whatever fails during set-up, what was started is stopped again."""
    tenant = backend.tenant if backend.base_engine is not None else None
    port = _free_port()
    private_pem, cert_pem = keys.generate(PROVIDER)
    key_file = tmp / "provider-key.pem"
    key_file.write_text(private_pem)
    root = f"http://127.0.0.1:{port}" + (f"/t/{tenant}" if tenant else "")
    sandbox.http.post("/_control/participants", json={
        "participant_code": PROVIDER, "participant_name": "Hospital 01", "roles": ["provider"],
        "endpoint_url": f"{root}/hcx", "encryption_cert": cert_pem}).raise_for_status()
    smart_file = tmp / "smart-client.pem"
    smart_file.write_text(smart_key())
    settings = backend.settings.model_copy(update={
        "claims_gateway_url": sandbox.url, "claims_participant_code": PROVIDER, "claims_gateway_code": GATEWAY,
        "claims_private_key": str(key_file), "claims_username": "billing@hospital01",
        "claims_secret": SecretStr("s3cret"), "claims_max_attempts": 3, "claims_flavour": flavour,
        "claims_fhir_client_id": SMART_CLIENT, "claims_fhir_private_key": str(smart_file),
        "claims_poll_seconds": 0.1, "claims_poll_max": 5,
        "claims_gateway_cert": sandbox.http.get("/_control/gateway-cert").text})  # callbacks need its bearer
    if flavour == "nhcx":  # the ABDM session; in the sandbox the clientId is the participant code
        settings = settings.model_copy(update={"claims_token_url": f"{sandbox.url}/gateway/v3/sessions",
                                               "claims_username": PROVIDER})
    if tenant:  # the platform's app; the tenant's own stack (and outbox dispatcher) serves the hospital
        app, fhir, fhir_path = backend.server_app(settings)
        dispatcher = app.state.tenants.stack(tenant).outbox
    else:
        fhir, fhir_path = FhirServer(settings, backend.engine), "/fhir"
        dispatcher = OutboxDispatcher(backend.engine, lease=timedelta(seconds=30), backoff_base=0.05)
        app = create_app(settings, fhir, dispatcher)
    payers = fhir.claims
    assert isinstance(payers, Payers) and payers.fhir.token is not None
    sandbox.http.post("/_control/fhir-clients", json={"client_id": SMART_CLIENT, "jwks": payers.fhir.token.jwks()}
                      ).raise_for_status()  # the payer registered our public key
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "uvicorn to start")
        dispatcher.start(poll_seconds=0.05)
        if ig:
            install(fhir, read_package(IG), access=SYSTEM)  # payloads are validated against NRCeS 6.5.0
        base = f"http://127.0.0.1:{port}{fhir_path}"
        with httpx.Client(base_url=base + "/", timeout=60, headers={"Accept": "application/fhir+json"}) as http:
            yield ClaimsServer(base, fhir, http, sandbox, dispatcher, root)
    finally:  # also when set-up failed: no dispatcher left sending another test's outbox rows
        dispatcher.stop()
        with backend.engine.connect() as conn:  # what failed, for the reader of a failed run
            for row in conn.exec_driver_sql("SELECT topic, status, last_error FROM outbox "
                                            "WHERE last_error IS NOT NULL"):
                print("outbox:", row[0], row[1], (row[2] or "")[:300])
        server.should_exit = True
        thread.join(timeout=20)


def store(server: ClaimsServer, resources: list[dict[str, Any]]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
    resp = server.http.post("", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 200, resp.text
