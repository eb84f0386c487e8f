"""GET /admin/hl7/messages: the HL7 v2 message store for operators (logic in interfaces/mllp/admin.py).

An admin user's token is required when auth is on (as for POST /auth/clients). Errors are masked and raw
messages left out unless ``reveal=true`` is asked for; with auth on, only an admin token gets here at all.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.auth import bearer_access
from fhir_server.auth.access import AccessContext
from fhir_server.errors import FORBIDDEN, INVALID, Issue, operation_outcome
from fhir_server.rest.server import FhirServer
from interfaces.mllp.admin import BadQuery, message_overview
from interfaces.mllp.store import MessageStore

router = APIRouter()
FHIR_JSON = "application/fhir+json"


@router.get("/admin/hl7/messages", summary="HL7 v2 messages by status: counts, newest first (admin users only)")
async def hl7_messages(request: Request, status: str | None = None, limit: int = 50, before: int | None = None,
                       reveal: bool = False) -> Response:
    server: FhirServer = request.app.state.fhir
    access = await bearer_access(request, "admin/hl7/messages", required=bool(server.settings.auth_required))
    if isinstance(access, Response):
        return access
    if access is not None and not (isinstance(access, AccessContext) and access.role == "admin"):
        return JSONResponse(operation_outcome([Issue(FORBIDDEN, "Only an admin user may see HL7 messages")]),
                            status_code=403, media_type=FHIR_JSON)
    try:
        body = await run_in_threadpool(message_overview, MessageStore(server.engine), status=status, limit=limit,
                                       before=before, reveal=reveal)
    except BadQuery as exc:
        return JSONResponse(operation_outcome([Issue(INVALID, str(exc), expression=(exc.parameter,))]),
                            status_code=400, media_type=FHIR_JSON)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
