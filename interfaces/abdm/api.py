"""The HTTP endpoints of ABDM, mounted under FHIR_ABDM_BASE_PATH when ABDM is configured.

Gateway -> us (``{base}/api/v3/...``, the v3 paths of PROTOCOLS.md §B4): the gateway's RS256 token is
checked, ``REQUEST-ID`` is required, the call is handled in one unit of work (state + callback enqueued
+ AuditEvent) and answered 202 with no body; the result reaches the gateway's callback through the outbox.
A body that cannot be handled is 400 at once; a bad or missing token 401.

Ours (hospital staff, an admin user's token when auth is on): ``POST {base}/hiu/consent-requests`` starts
a consent request for a patient; ``POST {base}/hiu/consents/{id}/pull`` asks again under a granted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.admin import admin_access
from fhir_server.errors import FhirError
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from interfaces.abdm import hip, hip_linking, hiu, hiu_receive
from interfaces.abdm.service import Abdm, abdm_for

log = logging.getLogger(__name__)

Handler = Callable[[Abdm, str, dict[str, Any]], None]

HIP_ROUTES: dict[str, Handler] = {
    "/api/v3/hip/patient/care-context/discover": hip.discover,
    "/api/v3/hip/link/care-context/init": hip.link_init,
    "/api/v3/hip/link/care-context/confirm": hip.link_confirm,
    "/api/v3/consent/request/hip/notify": hip.consent_notify,
    "/api/v3/hip/health-information/request": hip.hi_request,
    "/api/v3/hip/token/on-generate-token": hip_linking.on_generate_token,
    "/api/v3/link/on_carecontext": hip_linking.on_carecontext,
}
HIU_ROUTES: dict[str, Handler] = {
    "/api/v3/hiu/consent/request/on-init": hiu.on_init,
    "/api/v3/hiu/consent/request/notify": hiu.notify,
    "/api/v3/hiu/consent/on-fetch": hiu.on_fetch,
    "/api/v3/hiu/health-information/on-request": hiu.on_request,
}
# Callbacks we accept and only acknowledge (nothing depends on them yet).
ACKNOWLEDGED = ("/api/v3/hiu/consent/request/on-status", "/api/v3/links/context/on-notify",
                "/api/v3/patients/sms/on-notify")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": f"HTTP-{status}", "message": message}}, status_code=status)


def _gateway_endpoint(handler: Handler | None) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        abdm: Abdm = request.app.state.abdm
        if abdm.verifier is not None:
            try:
                await run_in_threadpool(abdm.verifier.verify, request.headers.get("authorization"))
            except PermissionError as exc:
                return _error(401, str(exc))
        request_id = request.headers.get("request-id")
        if not request_id:
            return _error(400, "the REQUEST-ID header is required")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        if handler is not None:
            try:
                await run_in_threadpool(handler, abdm, request_id, body)
            except hip.BadRequest as exc:
                return _error(400, str(exc))
            except FhirError as exc:
                return _error(exc.status, exc.outcome()["issue"][0].get("diagnostics", "refused"))
        return Response(status_code=202)

    return endpoint


async def _transfer(request: Request) -> Response:
    """Our dataPushUrl: a HIP pushes pages of encrypted documents here directly."""
    abdm: Abdm = request.app.state.abdm
    try:  # the URL's secret first: a caller without it learns nothing, not even what a body should be
        pull = await run_in_threadpool(hiu_receive.authorize_push, abdm, request.path_params["secret"])
    except FhirError as exc:
        return _error(exc.status, exc.outcome()["issue"][0].get("diagnostics", "refused"))
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    try:
        await run_in_threadpool(hiu_receive.receive, abdm, pull, body)
    except FhirError as exc:
        return _error(exc.status, exc.outcome()["issue"][0].get("diagnostics", "refused"))
    return Response(status_code=202)


async def _consent_request(request: Request) -> Response:
    abdm: Abdm = request.app.state.abdm
    access, refused = await admin_access(request, "abdm", "ABDM consent requests")
    if refused is not None:
        return refused
    try:
        body = await request.json()
        patient = str(body["patient"]).removeprefix("Patient/")
        args = (list(body["hiTypes"]), str(body["from"]), str(body["to"]), str(body["dataEraseAt"]))
    except (ValueError, KeyError, TypeError):
        return _error(400, "patient, hiTypes, from, to and dataEraseAt are required")
    # auth off: no caller to speak of, the endpoint acts for the hospital (its operators)
    caller = access if access is not None else as_system("ABDM consent request (auth off)")
    try:
        consent = await run_in_threadpool(hiu.request_consent, abdm, caller, patient, *args,
                                          str(body.get("purpose", "CAREMGT")), str(body.get("requester", "")))
    except FhirError as exc:
        return JSONResponse(exc.outcome(), status_code=exc.status, media_type="application/fhir+json")
    return JSONResponse({"consent": f"Consent/{consent}"}, status_code=202)


async def _pull(request: Request) -> Response:
    abdm: Abdm = request.app.state.abdm
    access, refused = await admin_access(request, "abdm", "ABDM health information pulls")
    if refused is not None:
        return refused
    caller = access if access is not None else as_system("ABDM pull (auth off)")
    try:
        await run_in_threadpool(hiu.pull_again, abdm, caller, request.path_params["consent"])
    except FhirError as exc:
        return JSONResponse(exc.outcome(), status_code=exc.status, media_type="application/fhir+json")
    return Response(status_code=202)


def mount(app: FastAPI, server: FhirServer) -> None:
    """Add the ABDM router to ``app`` when ABDM is configured (before the FHIR catch-all)."""
    abdm = abdm_for(server)
    if abdm is None:
        return
    app.state.abdm = abdm
    base = abdm.settings.base_path.rstrip("/")
    router = APIRouter(include_in_schema=False)  # add_route ignores a router prefix: full paths below
    routes: dict[str, Handler | None] = {}
    if abdm.settings.hip_id:
        routes.update(HIP_ROUTES)
    if abdm.settings.hiu_id:
        routes.update(HIU_ROUTES)
        router.add_route(base + "/api/v3/hiu/health-information/transfer/{secret}", _transfer, methods=["POST"])
        router.add_route(base + "/hiu/consent-requests", _consent_request, methods=["POST"])
        router.add_route(base + "/hiu/consents/{consent}/pull", _pull, methods=["POST"])
    routes.update(dict.fromkeys(ACKNOWLEDGED))
    for path, handler in routes.items():
        router.add_route(base + path, _gateway_endpoint(handler), methods=["POST"])
    app.include_router(router)
