"""``python -m interfaces.claims.sandbox.demo [--ig PATH]``: the whole claims journey, end to end, on this
machine: the HCX sandbox (gateway + payers) in its own process, our server on an embedded SQLite database
configured as participant ``hospital01@sandbox``, and every step as the FHIR calls billing staff would make.
Everything between the two goes over the encrypted HCX protocol; the gateway is told to fail twice on the
claim, so the retry shows too."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr

from fhir_server.app import create_app
from fhir_server.config import Settings
from fhir_server.packages.install import install, read_package
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade
from fhir_server.storage.outbox import OutboxDispatcher
from interfaces.claims import keys
from interfaces.claims.sandbox.records import PROVIDER, records

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            print(f"  ({what}: {time.monotonic() - start:.2f} s)")
            return found
        time.sleep(0.1)
    raise SystemExit(f"gave up waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--ig", help="NRCeS IG package folder to validate payloads against "
                                     "(e.g. ../shared/india/ndhm.in-6.5.0)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="claims-demo-"))
    gw_port, our_port = _port(), _port()
    sandbox = subprocess.Popen([sys.executable, "-m", "interfaces.claims.sandbox", "--port", str(gw_port)])
    gw = httpx.Client(base_url=f"http://127.0.0.1:{gw_port}", timeout=30)
    try:
        _until("the sandbox", lambda: _up(gw))
        private_pem, cert_pem = keys.generate(PROVIDER)
        (work / "key.pem").write_text(private_pem)
        gw.post("/_control/participants", json={"participant_code": PROVIDER, "roles": ["provider"],
                                                "endpoint_url": f"http://127.0.0.1:{our_port}/hcx",
                                                "encryption_cert": cert_pem}).raise_for_status()
        settings = Settings(database_url=f"sqlite:///{work / 'fhir.sqlite3'}", binary_store_url=f"file://{work}/bin",
                            claims_gateway_url=gw.base_url.__str__().rstrip("/"), claims_participant_code=PROVIDER,
                            claims_private_key=str(work / "key.pem"), claims_username="billing@hospital01",
                            claims_secret=SecretStr("demo"), outbox_dispatcher=False)
        engine = make_engine(settings)
        upgrade(engine)
        fhir = FhirServer(settings, engine)
        if args.ig:
            install(fhir, read_package(args.ig), access=as_system("claims demo: installing the NRCeS IG"))
            print(f"installed {args.ig}: payloads are validated against its profiles before they leave")
        dispatcher = OutboxDispatcher(engine, lease=timedelta(seconds=30), backoff_base=0.5)
        server = uvicorn.Server(uvicorn.Config(create_app(settings, fhir, dispatcher), host="127.0.0.1",
                                               port=our_port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        _until("our server", lambda: server.started)
        dispatcher.start(poll_seconds=0.1)
        run(httpx.Client(base_url=f"http://127.0.0.1:{our_port}/fhir/", timeout=60), gw)
        dispatcher.stop()
        server.should_exit = True
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=20)


def _up(gw: httpx.Client) -> bool:
    try:
        return gw.get("/_control/health").status_code == 200
    except httpx.HTTPError:
        return False


def run(api: httpx.Client, gw: httpx.Client) -> None:
    s = uuid.uuid4().hex[:6]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in records(s)]}
    api.post("", json=bundle, headers=FHIR_JSON).raise_for_status()
    print(f"stored patient Patient/pat-{s}, cover, admission, documents, pre-authorisation and claim")

    def submit(ref: str) -> str:
        resp = api.post(f"{ref}/$submit", json={"resourceType": "Parameters"}, headers=FHIR_JSON)
        resp.raise_for_status()
        cid = next(p["valueString"] for p in resp.json()["parameter"] if p["name"] == "correlationId")
        print(f"POST {ref}/$submit -> {resp.status_code}, correlation id {cid}")
        return str(cid)

    def search(rtype: str, **params: str) -> list[dict[str, Any]]:
        return [e["resource"] for e in api.get(rtype, params=params).json().get("entry", [])]

    submit(f"CoverageEligibilityRequest/cer-{s}")
    [cer] = _until("the cover check", lambda: search("CoverageEligibilityResponse",
                                                    request=f"CoverageEligibilityRequest/cer-{s}"))
    print(f"  cover: {cer['disposition']} (inforce={cer['insurance'][0]['inforce']})")

    gw.post("/_control/behaviours", json={"action": "/preauth/submit", "query": "Please send the admission note"})
    pre = submit(f"Claim/pre-{s}")
    [query] = _until("the insurer's query", lambda: search(
        "CommunicationRequest", identifier=f"urn:fhir-server:hcx:correlation-id|{pre}"))
    print(f"  insurer asks: {query['payload'][0]['contentString']!r} (CommunicationRequest/{query['id']})")
    answer = api.post("Communication", headers=FHIR_JSON, json={
        "resourceType": "Communication", "status": "completed",
        "basedOn": [{"reference": f"CommunicationRequest/{query['id']}"}],
        "subject": {"reference": f"Patient/pat-{s}"}, "about": [{"reference": f"Claim/pre-{s}"}],
        "payload": [{"contentReference": {"reference": f"DocumentReference/doc-{s}"}}]}).json()
    submit(f"Communication/{answer['id']}")
    [pa] = _until("the pre-authorisation", lambda: search("ClaimResponse", request=f"Claim/pre-{s}"))
    print(f"  pre-authorisation: {pa['disposition']}, preAuthRef {pa.get('preAuthRef')}")

    made = api.post(f"Invoice/inv-{s}/$claim", headers=FHIR_JSON, json={"resourceType": "Parameters", "parameter": [
        {"name": "preauthorization", "valueReference": {"reference": f"Claim/pre-{s}"}}]})
    made.raise_for_status()
    claim = f"Claim/{made.json()['id']}"
    print(f"POST Invoice/inv-{s}/$claim -> {made.status_code} {claim} "
          f"({len(made.json()['item'])} items from the invoice)")
    gw.post("/_control/behaviours", json=[{"action": "/claim/submit", "fail": 2},
                                          {"action": "/claim/submit", "pay": True}])
    print("  (the gateway will answer 503 twice: the outbox retries with backoff)")
    submit(claim)
    [cr] = _until("the claim decision", lambda: search("ClaimResponse", request=claim))
    print(f"  claim: {cr['disposition']}, {cr['total'][0]['amount']['value']} {cr['total'][0]['amount']['currency']}")
    [notice] = _until("the payment", lambda: search("PaymentNotice", request=claim))
    print(f"  payment booked: PaymentNotice/{notice['id']} {notice['amount']['value']} "
          f"-> {notice['payment']['reference']}")
    received = gw.get("/_control/received").json()["received"]
    leaked = [r for r in received if "Bystander" in str(r["bundle"])]
    print(f"the gateway received {len(received)} encrypted messages; another patient's data in them: {len(leaked)}")


if __name__ == "__main__":
    main()
