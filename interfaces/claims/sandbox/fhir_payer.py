"""The sandbox's FHIR-native payer (Da Vinci PAS style) under ``/fhir``, guarded by SMART Backend Services.

- ``GET /fhir/.well-known/smart-configuration`` names ``/fhir-auth/token``.
- ``POST /fhir-auth/token``: ``client_credentials`` with a ``private_key_jwt`` client assertion, checked as
  SMART App Launch 2.x backend-services says: the client is registered (``/_control/fhir-clients``, its
  JWKS), the signature verifies with the key its ``kid`` names (RS384 / ES384), ``iss`` = ``sub`` = the
  client, ``aud`` = this token URL, ``exp`` in the future and at most five minutes ahead, ``jti`` never seen.
- ``POST /fhir/Claim/$submit``, ``POST /fhir/CoverageEligibilityRequest/$submit`` (bearer required): the
  response at once, or -- scripted ``queued`` -- a queued ClaimResponse (or, with ``task``, a Task) that
  ``GET /fhir/ClaimResponse/[id]`` / ``GET /fhir/Task/[id]`` show complete after ``polls`` reads.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from interfaces.claims.sandbox import payer

if TYPE_CHECKING:
    from interfaces.claims.sandbox.gateway import Sandbox

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FHIR = "application/fhir+json"


@dataclass
class FhirPayerState:
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)  # client_id -> JWKS
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> client_id
    token_seconds: int = 300
    tokens_issued: int = 0
    jtis: set[str] = field(default_factory=set)  # assertion ids seen: a replay is refused
    refused: list[str] = field(default_factory=list)  # why assertions were refused (tests read it)
    received: list[dict[str, Any]] = field(default_factory=list)  # bundles submitted
    queued: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Type/id" -> {resource, final, polls}
    polls: int = 0


def _outcome(status: int, code: str, text: str) -> JSONResponse:
    return JSONResponse({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": text}]}, status, media_type=FHIR)


def check_assertion(state: FhirPayerState, assertion: str, audience: str) -> str:
    """The client_id the assertion authenticates; ValueError saying why not."""
    try:
        unsigned = jws.extract_compact(assertion.encode())
        header, unverified = unsigned.headers(), json.loads(unsigned.payload)
    except (JoseError, ValueError):
        raise ValueError("the assertion is not a compact JWS") from None
    if header.get("alg") not in ("RS384", "ES384") or not header.get("kid") or not isinstance(unverified, dict):
        raise ValueError("the assertion must be signed RS384 or ES384 and name its kid")
    client = str(unverified.get("iss") or "")
    jwks = state.clients.get(client)
    if jwks is None:
        raise ValueError("unknown client")
    keys = [k for k in jwks.get("keys") or [] if k.get("kid") == header["kid"]]
    if not keys:
        raise ValueError("no registered key has this kid")
    try:
        claims = jwt.decode(assertion, KeySet.import_key_set({"keys": keys}), algorithms=[header["alg"]]).claims
    except (JoseError, ValueError) as exc:
        raise ValueError("the signature does not verify with the client's registered key") from exc
    now = time.time()
    if claims.get("sub") != client:
        raise ValueError("sub must be the client_id")
    if claims.get("aud") != audience:
        raise ValueError("aud is not this token endpoint")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp <= now or exp > now + 300 + 5:
        raise ValueError("exp must be in the future and at most five minutes ahead")
    jti = str(claims.get("jti") or "")
    if not jti or jti in state.jtis:
        raise ValueError("jti missing or already used")
    state.jtis.add(jti)
    return client


def install(app: FastAPI, box: Sandbox) -> None:
    state = box.fhir

    def token_url() -> str:
        return f"{box.base_url}/fhir-auth/token"

    @app.get("/fhir/.well-known/smart-configuration")
    def smart_configuration() -> dict[str, Any]:
        return {"token_endpoint": token_url(), "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                "capabilities": ["client-confidential-asymmetric"]}

    @app.post("/fhir-auth/token")
    async def token(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != ASSERTION_TYPE:
            return JSONResponse({"error": "invalid_request"}, 400)
        try:
            with box.lock:
                client = check_assertion(state, form.get("client_assertion", ""), token_url())
        except ValueError as exc:
            with box.lock:
                state.refused.append(str(exc))
            return JSONResponse({"error": "invalid_client", "error_description": str(exc)}, 401)
        bearer = uuid.uuid4().hex
        with box.lock:
            state.tokens[bearer] = client
            state.tokens_issued += 1
        return JSONResponse({"access_token": bearer, "token_type": "bearer", "expires_in": state.token_seconds,
                             "scope": form.get("scope", "")})

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization", "").removeprefix("Bearer ").strip() in state.tokens

    def submit(kind: str) -> Any:
        async def handle(request: Request) -> JSONResponse:
            if not authorised(request):
                return _outcome(401, "login", "a SMART backend-services bearer token is required")
            behaviour = box.take(f"fhir:{kind}/$submit")
            if behaviour.get("fail"):
                return _outcome(503, "transient", "payer down (scripted)")
            bundle = await request.json()
            with box.lock:
                state.received.append(bundle)
            try:
                final = payer.eligibility_response(bundle) if kind == "CoverageEligibilityRequest" else \
                    payer.claim_response(bundle)
            except ValueError as exc:
                return _outcome(400, "invalid", str(exc))
            response = final["entry"][0]["resource"]
            if not behaviour.get("queued"):
                return JSONResponse(response, 200, media_type=FHIR)
            pending = {**response, "outcome": "queued"}
            pending.pop("total", None)
            pending.pop("preAuthRef", None)
            answer = pending
            if behaviour.get("task"):
                answer = {"resourceType": "Task", "id": str(uuid.uuid4()), "status": "in-progress",
                          "intent": "order", "focus": {"reference": "Claim"}}
                state.queued[f"Task/{answer['id']}"] = {
                    "resource": answer, "polls": int(behaviour.get("polls", 1)),
                    "final": {**answer, "status": "completed", "output": [
                        {"type": {"text": "response"},
                         "valueReference": {"reference": f"{response['resourceType']}/{response['id']}"}}]}}
            with box.lock:
                state.queued[f"{response['resourceType']}/{response['id']}"] = {
                    "resource": pending, "final": response,
                    "polls": 0 if behaviour.get("task") else int(behaviour.get("polls", 1))}
            return JSONResponse(answer, 200, media_type=FHIR)
        return handle

    for kind in ("Claim", "CoverageEligibilityRequest"):
        app.post(f"/fhir/{kind}/$submit")(submit(kind))

    @app.get("/fhir/{rtype}/{rid}")
    def read(rtype: str, rid: str, request: Request) -> JSONResponse:
        if not authorised(request):
            return _outcome(401, "login", "a SMART backend-services bearer token is required")
        with box.lock:
            state.polls += 1
            held = state.queued.get(f"{rtype}/{rid}")
            if held is None:
                return _outcome(404, "not-found", f"{rtype}/{rid} is not known here")
            if held["polls"] > 0:
                held["polls"] -= 1
                return JSONResponse(held["resource"], 200, media_type=FHIR)
            return JSONResponse(held["final"], 200, media_type=FHIR)

    @app.post("/_control/fhir-clients")
    async def register_client(request: Request) -> dict[str, Any]:
        body = await request.json()
        with box.lock:
            state.clients[str(body["client_id"])] = body["jwks"]
        return {"registered": body["client_id"]}

    @app.get("/_control/fhir")
    def fhir_state() -> dict[str, Any]:
        with box.lock:
            return {"received": list(state.received), "tokens_issued": state.tokens_issued,
                    "refused": list(state.refused), "polls": state.polls}
