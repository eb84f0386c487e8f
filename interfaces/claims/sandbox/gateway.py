"""An HCX gateway + payers in one process (HCX 0.9 as the reference gateway hcx-platform runs it).

As the gateway: bearer tokens from ``/participant/auth/token/generate``, the participant registry
(``/participant/search``, certificates at ``/certs/{code}.pem``), the synchronous header checks with the
gateway's error codes, 202 + acknowledgement. As each payer: decrypts with its own key, answers
asynchronously (a thread) with encrypted callbacks to the provider's ``endpoint_url`` + ``/…/on_…``,
originates ``/communication/request`` and ``/paymentnotice/request``. ``/_control/*`` scripts it (fail,
delay, redirect, partial, duplicate, query, pay) and shows everything it received, decrypted.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from joserfc import jwt
from joserfc.jwk import RSAKey

from interfaces.claims import envelope, keys
from interfaces.claims import protocol as p
from interfaces.claims.sandbox import fhir_payer, payer

PAYERS = ("payer01@sandbox", "payer02@sandbox")
GATEWAY_CODE = "hcx-gateway@sandbox"
GATEWAY_APIS = (p.ELIGIBILITY, p.PREDETERMINATION, p.PREAUTH, p.CLAIM, p.STATUS_REQUEST, p.TASK_SUBMIT,
                p.INSURANCE_PLAN, "/communication/on_request", "/paymentnotice/on_request")


@dataclass
class Sandbox:
    base_url: str = ""  # how participants reach us (for certificate URLs)
    flavour: str = "hcx"
    token_seconds: int = 600
    participants: dict[str, dict[str, Any]] = field(default_factory=dict)
    private_keys: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    tokens_issued: int = 0
    searches: int = 0  # registry look-ups answered (callers should cache them)
    seen_api_calls: set[str] = field(default_factory=set)
    cycles: dict[str, dict[str, Any]] = field(default_factory=dict)  # correlation id -> what the cycle is
    behaviours: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    fhir: fhir_payer.FhirPayerState = field(default_factory=fhir_payer.FhirPayerState)  # FHIR-native payer
    sent: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        signing_pem, self.signing_cert = keys.generate(GATEWAY_CODE)  # the gateway's bearer on callbacks
        self.signing_key = RSAKey.import_key(envelope.private_key(signing_pem))
        for code in PAYERS:
            private_pem, cert_pem = keys.generate(code)
            self.private_keys[code] = envelope.private_key(private_pem)
            self.register({"participant_code": code, "participant_name": code.split("@")[0].title(),
                           "roles": ["payor"], "status": "Active", "encryption_cert": cert_pem})

    def register(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.participants[entry["participant_code"]] = {**entry, "status": entry.get("status", "Active")}

    def public_entry(self, code: str) -> dict[str, Any]:
        entry = dict(self.participants[code])
        if self.flavour == "hcx":  # Swasth: the registry gives a URL to the PEM
            entry["encryption_cert"] = f"{self.base_url}/certs/{code}.pem"
        return entry

    def take(self, action: str) -> dict[str, Any]:
        """The next scripted behaviour for ``action`` (consumed), or {} (answer normally)."""
        with self.lock:
            for i, b in enumerate(self.behaviours):
                if b.get("action") in (action, "*"):
                    if b.get("fail", 0) > 1:
                        self.behaviours[i] = {**b, "fail": b["fail"] - 1}
                        return {**b, "fail": 1}
                    return self.behaviours.pop(i)
        return {}

    # --- sending, as a payer or as the gateway -------------------------------------------------------------

    def _post(self, url: str, body: dict[str, Any], record: dict[str, Any]) -> None:
        with self.lock:
            self.sent.append(record)
        try:
            now = int(time.time())
            bearer = jwt.encode({"alg": "RS256", "typ": "JWT"}, {"jti": p.new_id(), "iss": GATEWAY_CODE,
                                                                 "sub": GATEWAY_CODE, "iat": now, "exp": now + 300},
                                self.signing_key)
            httpx.post(url, json=body, timeout=10, headers={"Authorization": f"Bearer {bearer}"})
        except httpx.HTTPError:
            record["delivery"] = "failed"

    def send(self, sender: str, recipient: str, path: str, correlation_id: str, bundle: dict[str, Any] | None,
             *, status: str | None = None, extra: dict[str, Any] | None = None, api_call_id: str | None = None,
             timestamp: str | None = None, tamper: bool = False, workflow_id: str | None = None) -> dict[str, Any]:
        """A protocol message to ``recipient``'s endpoint: a JWE when there is a bundle, else a plain
        ProtocolResponse (errors, redirects)."""
        target = self.participants[recipient]
        headers: dict[str, Any] = {p.SENDER: sender, p.RECIPIENT: recipient, p.API_CALL_ID: api_call_id or p.new_id(),
                                   p.CORRELATION_ID: correlation_id, p.TIMESTAMP: timestamp or p.timestamp()}
        if workflow_id:
            headers[p.WORKFLOW_ID] = workflow_id
        if status:
            headers[p.STATUS] = status
        headers.update(extra or {})
        if bundle is None:
            body: dict[str, Any] = headers
        else:
            token = envelope.encrypt(headers, bundle, envelope.public_key(target["encryption_cert"]))
            if tamper:  # a flipped ciphertext byte: the tag no longer verifies
                head, ek, iv, ct, tag = token.split(".")
                ct = ("B" if ct[0] != "B" else "C") + ct[1:]
                token = ".".join((head, ek, iv, ct, tag))
            body = {"payload": token}
        record = {"path": path, "headers": headers, "bundle": bundle}
        self._post(f"{str(target.get('endpoint_url', '')).rstrip('/')}{path}", body, record)
        return record

    # --- acting as the payer ----------------------------------------------------------------------------

    def act(self, action: str, headers: dict[str, Any], bundle: dict[str, Any] | None, behaviour: dict[str, Any],
            error: tuple[str, str] | None) -> None:
        provider, payer_code = headers[p.SENDER], headers[p.RECIPIENT]
        cid, wf = headers[p.CORRELATION_ID], headers.get(p.WORKFLOW_ID)
        if behaviour.get("delay"):
            time.sleep(float(behaviour["delay"]))  # the payer is slow: the simulator's own pace, not a test wait
        if action in ("/communication/on_request", "/paymentnotice/on_request"):
            cycle = self.cycles.get(cid) or {}
            waiting = cycle.pop("after_answer", None)
            if action == "/communication/on_request" and waiting is not None:
                self.decide(*waiting)
            return
        if error is not None:  # the payer cannot read it: a protocol error back (plain ProtocolResponse)
            self.send(payer_code, provider, p.on_action(action), cid, None, status=p.ERROR, workflow_id=wf,
                      extra={p.ERROR_DETAILS: {"code": error[0], "message": error[1], "trace": ""}})
            return
        assert bundle is not None
        if action == p.STATUS_REQUEST:  # where the cycle stands, as a Task (it leaves the cycle as it is)
            self.send(payer_code, provider, p.on_action(action), cid,
                      payer.status_response(bundle, decided=bool((self.cycles.get(cid) or {}).get("decided"))),
                      status=p.COMPLETE, workflow_id=wf)
            return
        if action in (p.TASK_SUBMIT, p.INSURANCE_PLAN):  # a cancel / reprocess done, or the policy's plan
            answer = payer.task_response(bundle) if action == p.TASK_SUBMIT else payer.insurance_plan(bundle)
            self.send(payer_code, provider, p.on_action(action), cid, answer, status=p.COMPLETE, workflow_id=wf)
            return
        with self.lock:
            self.cycles[cid] = {"provider": provider, "payer": payer_code, "action": action, "bundle": bundle}
        if behaviour.get("redirect"):
            self.send(payer_code, provider, p.on_action(action), cid, None, status=p.REDIRECT, workflow_id=wf,
                      extra={p.REDIRECT_TO: behaviour["redirect"]})
            return
        if behaviour.get("reject"):
            self.send(payer_code, provider, p.on_action(action), cid, None, status=p.ERROR, workflow_id=wf,
                      extra={p.ERROR_DETAILS: {"code": p.ERR_DOMAIN_PROCESSING, "message": behaviour["reject"],
                                               "trace": ""}})
            return
        if behaviour.get("query"):  # ask first; decide when the provider has answered
            self.cycles[cid]["after_answer"] = (action, headers, bundle, behaviour)
            self.send(payer_code, provider, p.COMMUNICATION_REQUEST, cid,
                      payer.communication_request(bundle, str(behaviour["query"])), workflow_id=wf)
            return
        self.decide(action, headers, bundle, behaviour)

    def decide(self, action: str, headers: dict[str, Any], bundle: dict[str, Any], behaviour: dict[str, Any]) -> None:
        provider, payer_code = headers[p.SENDER], headers[p.RECIPIENT]
        cid, wf = headers[p.CORRELATION_ID], headers.get(p.WORKFLOW_ID)
        back = p.on_action(action)
        (self.cycles.get(cid) or {})["decided"] = True
        if action == p.ELIGIBILITY:
            answers: list[dict[str, Any] | None] = [payer.eligibility_response(bundle)]
        elif action == p.STATUS_REQUEST:
            answers = [None]
        else:
            answers = [payer.claim_response(bundle, approved=not behaviour.get("deny"))]
        if behaviour.get("partial"):
            first = payer.eligibility_response(bundle) if action == p.ELIGIBILITY else \
                payer.claim_response(bundle, outcome="partial", note="Under review")
            self.send(payer_code, provider, back, cid, first, status=p.PARTIAL, workflow_id=wf)
        record = self.send(payer_code, provider, back, cid, answers[0], status=p.COMPLETE, workflow_id=wf)
        if behaviour.get("duplicate"):  # the very same message again (same api_call_id)
            self.send(payer_code, provider, back, cid, answers[0], status=p.COMPLETE, workflow_id=wf,
                      api_call_id=record["headers"][p.API_CALL_ID], timestamp=record["headers"][p.TIMESTAMP])
        if behaviour.get("pay") and action == p.CLAIM:
            self.send(payer_code, provider, p.PAYMENT_REQUEST, cid,
                      payer.payment_notice(bundle, payer.claim_total(bundle)), workflow_id=wf)


def create_sandbox_app(sandbox: Sandbox | None = None) -> FastAPI:
    box = sandbox or Sandbox()
    app = FastAPI(title="HCX sandbox gateway + payers")
    app.state.sandbox = box

    def error(status: int, code: str, message: str, headers: dict[str, Any] | None = None) -> JSONResponse:
        h = headers or {}
        return JSONResponse(p.Ack(h.get(p.CORRELATION_ID), h.get(p.API_CALL_ID), (code, message)).body(), status)

    @app.post("/participant/auth/token/generate")
    async def token(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}  # x-www-form-urlencoded
        code = form.get("participant_code", "")
        if code not in box.participants or not form.get("secret"):
            return JSONResponse({"error": "invalid_grant"}, 401)
        bearer = uuid.uuid4().hex
        with box.lock:
            box.tokens[bearer] = code
            box.tokens_issued += 1
        return JSONResponse({"access_token": bearer, "expires_in": box.token_seconds, "token_type": "Bearer"})

    @app.post("/gateway/v3/sessions")
    async def session(request: Request) -> JSONResponse:
        """NHCX: the ABDM gateway session (here ``clientId`` is the participant code)."""
        body = await request.json()
        code = str(body.get("clientId") or "")
        if code not in box.participants or not body.get("clientSecret") or not request.headers.get("x-cm-id"):
            return JSONResponse({"error": {"code": "900901", "message": "invalid client"}}, 401)
        bearer = uuid.uuid4().hex
        with box.lock:
            box.tokens[bearer] = code
            box.tokens_issued += 1
        return JSONResponse({"accessToken": bearer, "expiresIn": box.token_seconds, "tokenType": "bearer"})

    @app.post("/participant/search")
    async def search(request: Request) -> JSONResponse:
        body = await request.json()
        code = body.get("participant_code") or ((body.get("filters") or {}).get("participant_code") or {}).get("eq")
        with box.lock:
            box.searches += 1
        found = [box.public_entry(code)] if code in box.participants else []
        if box.flavour == "nhcx":
            return JSONResponse(found[0] if found else {}, 200 if found else 404)
        return JSONResponse({"timestamp": int(time.time() * 1000), "participants": found})

    @app.get("/certs/{code}.pem")
    def cert(code: str) -> PlainTextResponse:
        entry = box.participants.get(code)
        return PlainTextResponse(entry["encryption_cert"] if entry else "", 200 if entry else 404)

    def gateway(action: str) -> Any:
        async def handle(request: Request) -> JSONResponse:
            behaviour = box.take(action)
            if behaviour.get("fail"):
                return error(503, p.ERR_SERVICE_UNAVAILABLE, "the gateway is down (scripted)")
            auth = request.headers.get("authorization", "")
            caller = box.tokens.get(auth.removeprefix("Bearer ").strip())
            if caller is None:
                return error(401, p.ERR_ACCESS_DENIED, "no valid bearer token")
            try:
                body = json.loads(await request.body())
                headers = envelope.protected_header(str(body.get("payload") or "") if isinstance(body, dict) else "")
                p.check_headers(headers, callback=action.rsplit("/", 1)[-1].startswith("on_"))
                if box.flavour == "nhcx" and action in (p.ELIGIBILITY, p.PREDETERMINATION, p.PREAUTH, p.CLAIM) \
                        and not headers.get(p.BEN_ABHA_ID):
                    raise p.ProtocolError(p.ERR_MANDATORY_HEADER_MISSING, "NHCX needs x-hcx-ben-abha-id")
                if headers[p.SENDER] != caller:
                    raise p.ProtocolError(p.ERR_ACCESS_DENIED, "the sender is not the token's participant")
                recipient = box.participants.get(headers[p.RECIPIENT])
                if recipient is None or recipient.get("status") != "Active" or headers[p.RECIPIENT] == caller:
                    raise p.ProtocolError(p.ERR_INVALID_RECIPIENT, "the recipient is not an active participant")
                p.check_timestamp(headers[p.TIMESTAMP], timedelta(hours=24))
                with box.lock:
                    if headers[p.API_CALL_ID] in box.seen_api_calls:
                        raise p.ProtocolError(p.ERR_INVALID_API_CALL_ID, "x-hcx-api_call_id was used before")
                    if action.endswith(("on_request",)) and headers[p.CORRELATION_ID] not in box.cycles:
                        raise p.ProtocolError(p.ERR_INVALID_CORRELATION_ID, "no such cycle")
                    box.seen_api_calls.add(headers[p.API_CALL_ID])
            except envelope.EnvelopeError as exc:
                return error(400, exc.code, str(exc))
            except p.ProtocolError as exc:
                return error(400, exc.code, str(exc), locals().get("headers"))
            except ValueError:
                return error(400, p.ERR_INVALID_PAYLOAD, "the body is not {\"payload\": JWE}")
            bundle, failure = None, None
            key = box.private_keys.get(headers[p.RECIPIENT])
            try:
                if key is None:
                    raise envelope.EnvelopeError(p.ERR_INVALID_ENCRYPTION, "not addressed to a payer here")
                _, bundle = envelope.decrypt_json(body["payload"], key)
            except envelope.EnvelopeError as exc:
                failure = (p.ERR_INVALID_ENCRYPTION, str(exc))
            with box.lock:
                box.received.append({"path": action, "headers": headers, "bundle": bundle,
                                     "error": failure[0] if failure else None})
            threading.Thread(target=box.act, args=(action, headers, bundle, behaviour, failure), daemon=True).start()
            return JSONResponse(p.Ack(headers[p.CORRELATION_ID], headers[p.API_CALL_ID]).body(), 202)
        return handle

    for action in GATEWAY_APIS:
        app.post(action)(gateway(action))

    fhir_payer.install(app, box)  # the FHIR-native payer under /fhir, SMART backend services

    @app.post("/_control/participants")
    async def register(request: Request) -> dict[str, Any]:
        box.register(await request.json())
        return {"registered": True}

    @app.post("/_control/behaviours")
    async def script(request: Request) -> dict[str, Any]:
        body = await request.json()
        with box.lock:
            box.behaviours.extend(body if isinstance(body, list) else [body])
        return {"queued": len(box.behaviours)}

    @app.post("/_control/settings")
    async def settings(request: Request) -> dict[str, Any]:
        body = await request.json()
        if "token_seconds" in body:
            box.token_seconds = int(body["token_seconds"])
        return {"token_seconds": box.token_seconds}

    @app.get("/_control/received")
    def received() -> dict[str, Any]:
        with box.lock:
            return {"received": list(box.received), "sent": [{k: v for k, v in s.items()} for s in box.sent],
                    "tokens_issued": box.tokens_issued, "searches": box.searches, "fhir": list(box.fhir.received)}

    @app.post("/_control/send")
    async def originate(request: Request) -> dict[str, Any]:
        """Send a message as a payer (or the gateway) on a cycle: ``{"path", "correlation_id", "status",
        "kind": "payment"|"communication"|"claim_response"|"none", "as": code, "to": code, "api_call_id",
        "timestamp", "tamper", "recipient_code", "from_correlation"}`` -- the tests' failure cases, a demo's payment."""
        b = await request.json()
        cycle = box.cycles.get(b.get("from_correlation") or b.get("correlation_id", "")) or {}
        if b.get("error_response"):  # NHCX /error/response: the gateway's plain ErrorResponse about a request
            plain = {"timestamp": int(time.time() * 1000), "correlation_id": b.get("correlation_id"),
                     "api_call_id": p.new_id(), "error": b["error_response"]}
            target = box.participants[str(b.get("to") or cycle.get("provider") or "")]
            box._post(f"{str(target.get('endpoint_url', '')).rstrip('/')}{b.get('path', '/error/response')}", plain,
                      {"path": b.get("path"), "headers": {}, "bundle": None})
            return {"headers": {p.API_CALL_ID: plain["api_call_id"]}}
        bundle_in = cycle.get("bundle") or {}
        kind = b.get("kind", "none")
        out = None if kind == "none" else \
            payer.payment_notice(bundle_in, payer.claim_total(bundle_in)) if kind == "payment" else \
            payer.communication_request(bundle_in, b.get("question", "Please send the discharge summary")) \
            if kind == "communication" else payer.claim_response(bundle_in)
        sender = b.get("as") or cycle.get("payer") or PAYERS[0]
        to = str(b.get("to") or cycle.get("provider") or "")
        extra = {p.RECIPIENT: b["recipient_code"]} if b.get("recipient_code") else {}
        if b.get("error_details"):
            extra[p.ERROR_DETAILS] = b["error_details"]
        record = box.send(sender, to, b["path"], b.get("correlation_id") or p.new_id(), out, status=b.get("status"),
                          extra=extra, api_call_id=b.get("api_call_id"), timestamp=b.get("timestamp"),
                          tamper=bool(b.get("tamper")))
        return {"headers": record["headers"]}

    @app.get("/_control/gateway-cert")
    def gateway_cert() -> PlainTextResponse:
        """The certificate of the key the gateway signs its bearer tokens with."""
        return PlainTextResponse(box.signing_cert)

    @app.get("/_control/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
