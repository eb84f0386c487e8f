"""The ABDM sandbox simulator: a real HTTP server playing the HIE-CM gateway and consent manager, a remote
HIU (asking our HIP for data) and a remote HIP (serving records when we are the HIU).

Gateway:   POST /gateway/v3/sessions (client credentials -> token), GET /gateway/v3/certs (JWKS of the
           RS256 key that signs its calls to us); every other POST under the v3 gateway paths is recorded
           (GET /sim/log) and answered 202 -- or 503 while /sim/fail says the gateway is down.
Driving:   POST /sim/call            a gateway call to our endpoints (discover, link, ...; signed token)
           POST /sim/consent/grant   notify our HIP of a granted consent artefact; /revoke, /expire
           POST /sim/hiu/request     a health-information request to our HIP with a fresh key pair, the
                                     dataPushUrl being /sim/hiu/push (decrypted here: GET /sim/hiu/received)
           POST /sim/cm/grant        grant one of our HIU's consent requests (then on-fetch, on-request and
                                     the remote HIP's encrypted push follow by themselves)
           GET  /sim/sms             the OTP messages our HIP sent (it is the SMS provider too)
Fidelius:  interfaces.abdm.fidelius, the same module (its vector test checks it against BouncyCastle's).
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from authlib.jose import JsonWebKey, JsonWebToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from interfaces.abdm.fidelius import FideliusError, KeyMaterial
from interfaces.abdm.gateway import timestamp
from interfaces.abdm.sandbox.records import remote_documents

GATEWAY_PREFIXES = ("/user-initiated-linking/", "/consent/", "/data-flow/", "/hip/", "/v3/", "/patient-share/")


class Sim:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "sim-gateway"})
        self.jwt = JsonWebToken(["RS256"])
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.sms: list[dict[str, Any]] = []
        self.outgoing: list[dict[str, Any]] = []  # every call made to our server, with its answer
        self.sessions = 0
        self.token_seconds = 1200
        self.tokens: set[str] = set()
        self.down = False
        self.hip_url = ""  # our HIP's bridge URL (..../abdm)
        self.hiu_url = ""  # our HIU's bridge URL
        self.pulls: dict[str, dict[str, Any]] = {}  # transactionId -> keys + what arrived
        self.consent_requests: dict[str, dict[str, Any]] = {}  # our HIU's requests, by gateway id
        self.artefacts: dict[str, dict[str, Any]] = {}  # artefact id -> detail (both directions)
        self.pushes: list[dict[str, Any]] = []  # what the remote HIP pushed to our HIU, and the answers
        self.tamper_next = False
        self.bad_signatures = False  # sign artefacts wrongly (a forged consent)
        self.hold_pushes = False  # the remote HIP keeps its pages until /sim/hip/release
        self.held: list[Any] = []
        self.link_tokens: set[str] = set()
        self.http = httpx.Client(timeout=30)

    # --- calling our server ----------------------------------------------------------------------------

    def sign(self, detail: dict[str, Any]) -> str:
        """The consent manager's signature over an artefact's detail: SHA256withRSA over its compact JSON."""
        message = orjson.dumps(detail) + (b" forged" if self.bad_signatures else b"")
        return base64.b64encode(self.key.get_private_key().sign(message, padding.PKCS1v15(),
                                                                hashes.SHA256())).decode()

    def token(self, audience: str = "account") -> str:
        now = int(time.time())
        claims = {"iss": self.base_url, "sub": "gateway", "aud": audience, "iat": now, "exp": now + 600}
        return self.jwt.encode({"alg": "RS256", "kid": "sim-gateway"}, claims, self.key).decode()

    def call(self, url: str, body: dict[str, Any], *, request_id: str | None = None, token: str | None = None,
             hip_id: str | None = None) -> dict[str, Any]:
        request_id = request_id or str(uuid.uuid4())
        headers = {"REQUEST-ID": request_id, "TIMESTAMP": timestamp(), "X-CM-ID": "sbx",
                   "Authorization": f"Bearer {token if token is not None else self.token()}"}
        if hip_id:
            headers["X-HIP-ID"] = hip_id
        try:
            resp = self.http.post(url, json=body, headers=headers)
            result = {"status": resp.status_code, "requestId": request_id, "body": resp.text[:2000]}
        except httpx.HTTPError as exc:
            result = {"status": 0, "error": type(exc).__name__, "requestId": request_id}
        with self.lock:
            self.outgoing.append({"url": url, **result})
        return result

    def later(self, work: Any) -> None:
        """Answer 202 first, call back after (as the gateway does)."""
        threading.Thread(target=work, daemon=True).start()

    # --- the remote HIU's data request ------------------------------------------------------------------

    def request_data(self, spec: dict[str, Any]) -> dict[str, Any]:
        keys = KeyMaterial.generate()
        txn = str(uuid.uuid4())
        key_material = keys.to_json(x509=bool(spec.get("x509")))
        if spec.get("keyValue") is not None:  # a wrong or malformed key, on purpose
            key_material["dhPublicKey"]["keyValue"] = spec["keyValue"]
        self.pulls[txn] = {"keys": keys, "pages": [], "documents": [], "errors": []}
        body = {"transactionId": txn, "hiRequest": {
            "consent": {"id": spec["consentId"]},
            "dateRange": {"from": spec["from"], "to": spec["to"]},
            "dataPushUrl": self.base_url + "/sim/hiu/push", "keyMaterial": key_material}}
        result = self.call(self.hip_url + "/api/v3/hip/health-information/request", body,
                           request_id=spec.get("requestId"), hip_id=spec.get("hipId"))
        return {**result, "transactionId": txn}

    def receive_push(self, body: dict[str, Any]) -> int:
        pull = self.pulls.get(str(body.get("transactionId")))
        if pull is None:
            return 404
        pull["pages"].append({k: body.get(k) for k in ("pageNumber", "pageCount")})
        for entry in body.get("entries") or []:
            try:
                plain = pull["keys"].decrypt(entry["content"], body.get("keyMaterial"))
                pull["documents"].append({"careContextReference": entry.get("careContextReference"),
                                          "checksum": entry.get("checksum"), "bundle": orjson.loads(plain)})
            except (FideliusError, KeyError, orjson.JSONDecodeError) as exc:
                pull["errors"].append(str(exc))
        return 202

    # --- consent manager for our HIU ----------------------------------------------------------------------

    def on_gateway_call(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        request_id = headers.get("request-id", "")
        if path == "/consent/v3/request/init":
            gateway_id = str(uuid.uuid4())
            self.consent_requests[gateway_id] = {"consent": body.get("consent") or {}, "status": "REQUESTED"}
            self.later(lambda: self.call(self.hiu_url + "/api/v3/hiu/consent/request/on-init",
                                         {"consentRequest": {"id": gateway_id}, "response": {"requestId": request_id}}))
        elif path == "/consent/v3/fetch":
            artefact = str(body.get("consentId"))
            detail = self.artefacts.get(artefact)
            if detail is not None:
                self.later(lambda: self.call(self.hiu_url + "/api/v3/hiu/consent/on-fetch", {
                    "consent": {"status": "GRANTED", "consentDetail": detail, "signature": self.sign(detail)},
                    "response": {"requestId": request_id}}))
        elif path == "/v3/token/generate-token":
            link_token = f"sim-link-token-{uuid.uuid4()}"
            self.link_tokens.add(link_token)
            self.later(lambda: self.call(self.hip_url + "/api/v3/hip/token/on-generate-token", {
                "abhaAddress": body.get("abhaAddress"), "linkToken": link_token,
                "response": {"requestId": request_id}}))
        elif path == "/hip/v3/link/carecontext":
            ok = headers.get("x-link-token") in self.link_tokens
            self.later(lambda: self.call(self.hip_url + "/api/v3/link/on_carecontext", {
                "abhaAddress": body.get("abhaAddress"), "status": "Successfully Linked care context" if ok else "",
                **({} if ok else {"error": {"code": "ABDM-1094", "message": "Invalid link token"}}),
                "response": {"requestId": request_id}}))
        elif path == "/data-flow/v3/health-information/request":
            self.later(lambda: self._serve(request_id, body.get("hiRequest") or {}))
        elif path == "/hip/v3/link/context/notify":
            self.later(lambda: self.call(self.hip_url + "/api/v3/links/context/on-notify", {
                "acknowledgement": {"status": "SUCCESS"}, "response": {"requestId": request_id}}))
        elif path == "/hip/v3/link/patient/links/sms/notify2":
            self.later(lambda: self.call(self.hip_url + "/api/v3/patients/sms/on-notify", {
                "acknowledgement": {"status": "SUCCESS"}, "response": {"requestId": request_id}}))

    def grant(self, gateway_id: str) -> str:
        request = self.consent_requests[gateway_id]
        consent = request["consent"]
        artefact = str(uuid.uuid4())
        self.artefacts[artefact] = {
            "schemaVersion": "v3", "consentId": artefact, "createdAt": timestamp(),
            "consentRequestId": gateway_id,
            "patient": consent.get("patient"), "purpose": consent.get("purpose"),
            "hip": {"id": "SIM-HIP", "name": "Simulated Remote Hospital"}, "hiu": consent.get("hiu"),
            "consentManager": {"id": "sbx"}, "requester": consent.get("requester"),
            "hiTypes": consent.get("hiTypes"), "permission": consent.get("permission"),
            "careContexts": [{"patientReference": "SIM-PATIENT", "careContextReference": cc}
                             for cc in ("SIM-CC-1", "SIM-CC-2")]}
        request["status"] = "GRANTED"
        request.setdefault("artefacts", []).append(artefact)
        self.call(self.hiu_url + "/api/v3/hiu/consent/request/notify", {"notification": {
            "consentRequestId": gateway_id, "status": "GRANTED", "consentArtefacts": [{"id": artefact}]}})
        return artefact

    def _serve(self, request_id: str, hi_request: dict[str, Any]) -> None:
        """The remote HIP's answer to our HIU: on-request, then encrypted pages pushed to our dataPushUrl."""
        txn = str(uuid.uuid4())
        self.call(self.hiu_url + "/api/v3/hiu/health-information/on-request", {
            "hiRequest": {"transactionId": txn, "sessionStatus": "REQUESTED"}, "response": {"requestId": request_id}})
        detail = self.artefacts.get(str((hi_request.get("consent") or {}).get("id")), {})
        keys = KeyMaterial.generate()
        documents = remote_documents(detail.get("hiTypes") or [], (detail.get("patient") or {}).get("id", ""))
        pages = [documents[:1], documents[1:]] if len(documents) > 1 else [documents]
        if self.hold_pushes:  # pushed later, on /sim/hip/release (our HIU restarts in between)
            self.held.append(lambda: self._push(txn, keys, pages, hi_request))
            return
        self._push(txn, keys, pages, hi_request)

    def _push(self, txn: str, keys: KeyMaterial, pages: list[Any], hi_request: dict[str, Any]) -> None:
        for number, page in enumerate(pages, start=1):
            entries = []
            for cc, doc in page:
                content = keys.encrypt(orjson.dumps(doc), hi_request.get("keyMaterial"))
                if self.tamper_next:
                    raw = bytearray(content.encode())
                    raw[10] = ord("A") if raw[10] != ord("A") else ord("B")
                    content = raw.decode()
                entries.append({"content": content, "media": "application/fhir+json", "checksum": "",
                                "careContextReference": cc})
            body = {"pageNumber": number, "pageCount": len(pages), "transactionId": txn, "entries": entries,
                    "keyMaterial": keys.to_json(x509=number % 2 == 0)}  # both key encodings, as HIPs send them
            try:
                resp = self.http.post(str(hi_request.get("dataPushUrl")), json=body)
                status, answer = resp.status_code, resp.text[:500]
            except httpx.HTTPError as exc:
                status, answer = 0, type(exc).__name__
            self.pushes.append({"transactionId": txn, "page": number, "status": status, "answer": answer})
        self.tamper_next = False


def create_app(base_url: str) -> FastAPI:
    sim = Sim(base_url)
    app = FastAPI(title="ABDM sandbox simulator")
    app.state.sim = sim

    @app.post("/gateway/v3/sessions")
    async def sessions(request: Request) -> Response:
        if sim.down:
            return Response(status_code=503)
        body = await request.json()
        if body.get("grantType") != "client_credentials" or not body.get("clientId") or not body.get("clientSecret"):
            return JSONResponse({"error": {"code": "900901", "message": "Invalid credentials"}}, status_code=401)
        token = f"sim-session-{uuid.uuid4()}"
        with sim.lock:
            sim.sessions += 1
            sim.tokens.add(token)
        return JSONResponse({"accessToken": token, "expiresIn": sim.token_seconds, "refreshExpiresIn": 1800,
                             "refreshToken": "unused", "tokenType": "bearer"})

    @app.get("/gateway/v3/certs")
    def certs() -> dict[str, Any]:
        return {"keys": [{**sim.key.as_dict(is_private=False), "kid": "sim-gateway", "use": "sig", "alg": "RS256"}]}

    @app.post("/sim/config")
    async def config(request: Request) -> dict[str, Any]:
        body = await request.json()
        sim.hip_url = body.get("hipUrl", sim.hip_url).rstrip("/")
        sim.hiu_url = body.get("hiuUrl", sim.hiu_url).rstrip("/")
        sim.token_seconds = int(body.get("tokenSeconds", sim.token_seconds))
        sim.tamper_next = bool(body.get("tamperNext", sim.tamper_next))
        sim.bad_signatures = bool(body.get("badSignatures", sim.bad_signatures))
        sim.hold_pushes = bool(body.get("holdPushes", sim.hold_pushes))
        return {"ok": True}

    @app.post("/sim/fail")
    async def fail(request: Request) -> dict[str, Any]:
        sim.down = (await request.json()).get("gateway") == "down"
        return {"down": sim.down}

    @app.get("/sim/log")
    def log(path: str | None = None) -> list[dict[str, Any]]:
        with sim.lock:
            return [e for e in sim.log if path is None or e["path"] == path]

    @app.get("/sim/state")
    def state() -> dict[str, Any]:
        return {"sessions": sim.sessions, "outgoing": sim.outgoing[-20:], "consentRequests": sim.consent_requests,
                "pushes": sim.pushes, "held": len(sim.held),
                "artefacts": list(sim.artefacts)}

    @app.post("/sim/sms")
    async def sms(request: Request) -> Response:
        sim.sms.append(await request.json())
        return Response(status_code=202)

    @app.get("/sim/sms")
    def sms_list() -> list[dict[str, Any]]:
        return sim.sms

    # Endpoints that call our server are plain functions (run in the thread pool): our server calls back
    # into this one (the JWKS) while they wait.
    @app.post("/sim/call")
    def call(spec: dict[str, Any] = Body()) -> dict[str, Any]:
        token = spec.get("token") if "audience" not in spec else sim.token(spec["audience"])
        return sim.call(sim.hip_url + spec["path"] if spec.get("to", "hip") == "hip" else sim.hiu_url + spec["path"],
                        spec["body"], request_id=spec.get("requestId"), token=token, hip_id=spec.get("hipId"))

    @app.post("/sim/hip/release")
    def release() -> dict[str, Any]:
        """Push the pages the remote HIP held back."""
        held, sim.held = sim.held, []
        for push in held:
            push()
        return {"released": len(held)}

    @app.post("/sim/consent/{action}")
    def consent(action: str, spec: dict[str, Any] = Body()) -> dict[str, Any]:
        artefact = spec.get("consentId") or str(uuid.uuid4())
        if action == "grant" and artefact in sim.artefacts:  # the very same notification again
            detail = sim.artefacts[artefact]
            body = {"notification": {"status": "GRANTED", "consentId": artefact, "consentDetail": detail,
                                     "signature": sim.sign(detail), "grantAcknowledgement": False}}
        elif action == "grant":
            detail = {"schemaVersion": "v3", "consentId": artefact, "createdAt": timestamp(),
                      "patient": {"id": spec.get("abhaAddress", "")},
                      "careContexts": [{"patientReference": spec["patientReference"], "careContextReference": cc}
                                       for cc in spec["careContexts"]],
                      "purpose": {"text": "Care Management", "code": "CAREMGT",
                                  "refUri": "http://terminology.hl7.org/ValueSet/v3-PurposeOfUse"},
                      "hip": {"id": spec.get("hipId", ""), "name": "Our hospital"},
                      "hiu": {"id": spec.get("hiuId", "SIM-HIU"), "name": "Simulated remote HIU"},
                      "consentManager": {"id": "sbx"}, "hiTypes": spec["hiTypes"],
                      "permission": {"accessMode": "VIEW", "dateRange": {"from": spec["from"], "to": spec["to"]},
                                     "dataEraseAt": spec["dataEraseAt"],
                                     "frequency": spec.get("frequency") or {"unit": "HOUR", "value": 1,
                                                                            "repeats": 0}}}
            sim.artefacts[artefact] = detail
            body = {"notification": {"status": "GRANTED", "consentId": artefact, "consentDetail": detail,
                                     "signature": sim.sign(detail), "grantAcknowledgement": False}}
        else:
            body = {"notification": {"status": "REVOKED" if action == "revoke" else "EXPIRED", "consentId": artefact}}
        result = sim.call(sim.hip_url + "/api/v3/consent/request/hip/notify", body, request_id=spec.get("requestId"),
                          hip_id=spec.get("hipId"))
        return {**result, "consentId": artefact}

    @app.post("/sim/hiu/request")
    def hiu_request(spec: dict[str, Any] = Body()) -> dict[str, Any]:
        return sim.request_data(spec)

    @app.post("/sim/hiu/push")
    async def hiu_push(request: Request) -> Response:
        return Response(status_code=sim.receive_push(await request.json()))

    @app.get("/sim/hiu/received")
    def received(transactionId: str) -> dict[str, Any]:
        pull = sim.pulls.get(transactionId) or {}
        return {k: pull.get(k, []) for k in ("pages", "documents", "errors")}

    @app.post("/sim/cm/grant")
    def cm_grant(spec: dict[str, Any] = Body()) -> dict[str, Any]:
        return {"consentId": sim.grant(spec["consentRequestId"])}

    @app.post("/sim/cm/revoke")
    def cm_revoke(spec: dict[str, Any] = Body()) -> dict[str, Any]:
        """The patient revokes a consent our HIU holds: its artefacts are notified REVOKED."""
        request = sim.consent_requests[spec["consentRequestId"]]
        request["status"] = "REVOKED"
        return sim.call(sim.hiu_url + "/api/v3/hiu/consent/request/notify", {"notification": {
            "consentRequestId": spec["consentRequestId"], "status": "REVOKED",
            "consentArtefacts": [{"id": a} for a in request.get("artefacts", [])]}})

    @app.post("/{path:path}")
    async def gateway(path: str, request: Request) -> Response:
        path = "/" + path
        if not path.startswith(GATEWAY_PREFIXES):
            return Response(status_code=404)
        if sim.down:
            return Response(status_code=503)
        token = (request.headers.get("authorization") or "")[7:]
        if token not in sim.tokens:
            return JSONResponse({"error": {"code": "900901", "message": "Invalid session"}}, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return Response(status_code=400)
        headers = {k: v for k, v in request.headers.items()
                   if k in ("request-id", "timestamp", "x-cm-id", "x-hip-id", "x-hiu-id", "x-link-token")}
        with sim.lock:
            sim.log.append({"path": path, "headers": headers, "body": body,
                            "at": datetime.now(UTC).isoformat()})
        sim.on_gateway_call(path, headers, body)
        return Response(status_code=202)

    return app
