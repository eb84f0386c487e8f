"""Operator views over HTTP: GET /admin/outbox. Every /admin endpoint needs an admin user's token, also on
the embedded default with auth off (operator views show every patient's traffic)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.auth import bearer_access
from fhir_server.api.tenants import stack_of
from fhir_server.auth.access import AccessContext
from fhir_server.errors import FORBIDDEN, Issue, operation_outcome
from fhir_server.jobs import outbox_admin
from fhir_server.rest.server import FhirServer

router = APIRouter()


async def require_admin(request: Request, path: str, what: str) -> Response | None:
    """The refusal (401/403 OperationOutcome) unless the caller is an admin user."""
    return (await admin_access(request, path, what))[1]


async def admin_access(request: Request, path: str, what: str) -> tuple[AccessContext | None, Response | None]:
    """(the admin user's access context, None) or (None, the 401/403 refusal). A token is required even
    when the FHIR API is open (FHIR_AUTH_REQUIRED unset on the embedded default)."""
    access = await bearer_access(request, path, required=True)
    if isinstance(access, Response):
        return None, access
    if not isinstance(access, AccessContext):
        return None, JSONResponse(operation_outcome([Issue("login", "Authentication is required")]),
                                  status_code=401, media_type="application/fhir+json",
                                  headers={"WWW-Authenticate": 'Bearer realm="fhir"'})
    if access.role != "admin":
        return None, JSONResponse(operation_outcome([Issue(FORBIDDEN, f"Only an admin user may see {what}")]),
                                  status_code=403, media_type="application/fhir+json")
    return access, None


@router.get("/admin/outbox", summary="Outbox rows by status (operators)")
async def outbox(request: Request, status: str | None = None, limit: int = 100) -> Response:
    refused = await require_admin(request, "admin", "the outbox")
    if refused is not None:
        return refused
    server: FhirServer = stack_of(request).fhir
    if status is not None and status not in outbox_admin.STATUSES:
        return JSONResponse(operation_outcome([Issue("invalid", f"status must be one of {outbox_admin.STATUSES}",
                                                     expression=("status",))]), status_code=400)
    body = await run_in_threadpool(outbox_admin.list_rows, server.engine, status, max(1, min(limit, 1000)))
    return JSONResponse(body)


@router.post("/admin/outbox/{row_id}/retry", summary="Make an outbox row due again (operators)")
async def retry(request: Request, row_id: int) -> Response:
    refused = await require_admin(request, "admin", "the outbox")
    if refused is not None:
        return refused
    server: FhirServer = stack_of(request).fhir
    count = await run_in_threadpool(outbox_admin.retry, server.engine, row_id)
    return JSONResponse({"retried": count}, status_code=200 if count else 404)
