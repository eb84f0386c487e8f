"""The platform administration over HTTP (issue 13 item 5): hospitals, their figures, suspension, limits and a
hospital admin's password reset. A platform administrator is nobody's user: the bearer is FHIR_PLATFORM_TOKEN,
outside every tenant, and these endpoints never show a hospital's clinical data (counts and sizes only).
Unset FHIR_PLATFORM_TOKEN: the API answers 401 to everyone (the ``tenants`` command still works)."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.tenants import stack_of
from fhir_server.audit.codes import own
from fhir_server.audit.events import Actor, Record
from fhir_server.auth.store import AuthStore
from fhir_server.errors import INVALID, FhirError, Issue, operation_outcome
from fhir_server.tenancy.engines import tenant_engine
from fhir_server.tenancy.metrics import tenant_metrics
from fhir_server.tenancy.model import DEFAULT, TenantStatus
from fhir_server.tenancy.stacks import Tenants

router = APIRouter()
log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(operation_outcome([Issue(code, text)]), status_code=status, media_type=FHIR_JSON,
                        headers=headers)


def _refusal(request: Request) -> Response | None:
    if stack_of(request).code != DEFAULT:  # the platform is above the hospitals, never under /t/{tenant}
        return _outcome(404, "not-found", "The platform administration is not part of a hospital")
    expected = request.app.state.fhir.settings.platform_token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if expected is None or scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), expected.get_secret_value().encode()):
        return _outcome(401, "login", "The platform administrator's token is required",
                        {"WWW-Authenticate": 'Bearer realm="platform"'})
    return None


async def _run(request: Request, what: str, work: Callable[[Tenants], Any], status: int = 200) -> Response:
    refused = _refusal(request)
    tenants: Tenants = request.app.state.tenants
    address = request.client.host if request.client else None
    if refused is not None:
        _audit(tenants, what, refused.status_code, address)
        return refused
    try:
        body = await run_in_threadpool(work, tenants)
    except FhirError as exc:
        _audit(tenants, what, exc.status, address)
        return JSONResponse(exc.outcome(), status_code=exc.status, media_type=FHIR_JSON)
    except ValueError as exc:  # a weak password, a bad limit
        _audit(tenants, what, 422, address)
        return _outcome(422, INVALID, str(exc))
    _audit(tenants, what, status, address)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _audit(tenants: Tenants, what: str, status: int, address: str | None) -> None:
    """Each platform action, also a refused one, as an AuditEvent in the platform's (default tenant's) log."""
    audit = tenants.default.fhir.audit
    if audit is not None:
        audit.recorder.record(Record(own("platform", f"Platform administration: {what}"), "E", status,
                                     Actor(address=address, role="platform-admin")))


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        raise FhirError(400, INVALID, "The body is not JSON") from None
    if not isinstance(body, dict):
        raise FhirError(400, INVALID, "The body must be a JSON object")
    return body


def _limit(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise FhirError(422, INVALID, f"{name} must be a whole number of at least 0 (or null: no limit)", (name,))
    return value


@router.get("/platform/tenants", summary="Hospitals on this server (platform administrators)")
async def list_tenants(request: Request) -> Response:
    return await _run(request, "list", lambda t: [x.to_json() for x in t.store.list()])


@router.post("/platform/tenants", summary="Create a hospital (its own schema or file, at the current migration)")
async def create_tenant(request: Request) -> Response:
    if _refusal(request) is not None:  # who asks, before what the body says
        return await _run(request, "create", lambda t: None)
    try:
        body = await _json(request)
        code, name = str(body.get("code", "")), str(body.get("name", "")).strip()
        if not name:
            raise FhirError(422, INVALID, "name is required", ("name",))
        limits = {"max_users": _limit(body, "maxUsers"), "max_patients": _limit(body, "maxPatients")}
    except FhirError as exc:
        return JSONResponse(exc.outcome(), status_code=exc.status, media_type=FHIR_JSON)

    def create(t: Tenants) -> dict[str, Any]:
        tenant, seconds = t.store.create(code, name, **limits)
        return {**tenant.to_json(), "createdInSeconds": round(seconds, 3)}

    return await _run(request, f"create {code}", create, 201)


@router.get("/platform/tenants/{code}", summary="A hospital's figures: patients, users, resources, storage, requests")
async def show_tenant(request: Request, code: str) -> Response:
    return await _run(request, f"show {code}", lambda t: tenant_metrics(t.store, t.settings, code))


@router.post("/platform/tenants/{code}/suspend", summary="Refuse every request, token and HL7 message at once")
async def suspend_tenant(request: Request, code: str) -> Response:
    return await _run(request, f"suspend {code}",
                      lambda t: t.store.set_status(code, TenantStatus.SUSPENDED).to_json())


@router.post("/platform/tenants/{code}/activate", summary="Serve a suspended hospital again")
async def activate_tenant(request: Request, code: str) -> Response:
    return await _run(request, f"activate {code}", lambda t: t.store.set_status(code, TenantStatus.ACTIVE).to_json())


@router.put("/platform/tenants/{code}/limits", summary="A hospital's limits (maxUsers, maxPatients; null: none)")
async def tenant_limits(request: Request, code: str) -> Response:
    if _refusal(request) is not None:  # who asks, before what the body says
        return await _run(request, f"limits {code}", lambda t: None)
    try:
        body = await _json(request)
        limits = {"max_users": _limit(body, "maxUsers"), "max_patients": _limit(body, "maxPatients")}
    except FhirError as exc:
        return JSONResponse(exc.outcome(), status_code=exc.status, media_type=FHIR_JSON)
    return await _run(request, f"limits {code}", lambda t: t.store.set_limits(code, **limits).to_json())


@router.post("/platform/tenants/{code}/users/{username}/password",
             summary="Reset a hospital user's password (a new one, answered once)")
async def reset_password(request: Request, code: str, username: str) -> Response:
    def reset(t: Tenants) -> dict[str, Any]:
        t.store.require(code)
        password = os.environ.get("FHIR_NEW_PASSWORD") or "Aa1!" + secrets.token_urlsafe(18)
        engine = tenant_engine(t.default.fhir.engine, t.settings, code)
        try:
            if not AuthStore(engine).set_password(username, password):
                raise FhirError(404, "not-found", f"No user {username} in {code}")
        finally:
            if engine.dialect.name == "sqlite" and code != DEFAULT:
                engine.dispose()
        log.info("platform: password of a user of %s reset", code)  # never the name or the password
        return {"tenant": code, "username": username, "password": password}

    return await _run(request, f"reset a password in {code}", reset)
