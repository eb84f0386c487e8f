"""The ABDM simulator in its own process, and a hospital server (HIP + HIU) wired to it, over real HTTP."""

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

from fhir_server.app import create_app
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.outbox import OutboxDispatcher
from interfaces.abdm.settings import AbdmSettings, configure
from tests.conftest import Backend, _free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
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
    with httpx.Client(base_url=url, timeout=30) as http:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the simulator exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                return http.get("/gateway/v3/certs").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, "the ABDM simulator to start")
        try:
            yield Simulator(url, http)
        finally:
            proc.terminate()
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


def start_hospital(backend: Backend, sim: Simulator, *, install_ig: bool = True) -> Iterator[Hospital]:
    settings = backend.settings.model_copy(update={"audit_enabled": True,
                                                   "outbox_dispatcher": True, "outbox_poll_seconds": 0.1})
    fhir = FhirServer(settings, backend.engine)
    ENGINES[:] = [backend.engine]
    port = _free_port()
    configure(fhir, AbdmSettings(gateway_url=sim.url, client_id="hospital", client_secret="secret",
                                 hip_id=HIP_ID, hip_name="Test Hospital", hiu_id=HIU_ID,
                                 public_url=f"http://127.0.0.1:{port}", otp_webhook_url=sim.url + "/sim/sms",
                                 mr_system="https://hospital.example/mrn"))
    dispatcher = OutboxDispatcher(fhir.engine, lease=timedelta(seconds=30), backoff_base=0.2)
    app = create_app(settings, fhir, dispatcher)
    if install_ig:
        from fhir_server.packages.install import install, read_package

        install(fhir, read_package(Path("/work/shared/india/ndhm.in-6.5.0")))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    url = f"http://127.0.0.1:{port}"
    sim.post("/sim/config", {"hipUrl": url + "/abdm", "hiuUrl": url + "/abdm"})
    with httpx.Client(base_url=url, timeout=60) as http:
        yield Hospital(url, url + "/abdm", fhir, http)
    server.should_exit = True
    thread.join(timeout=20)
    if fhir.audit is not None:
        fhir.audit.recorder.close()
