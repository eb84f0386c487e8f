"""GET /admin/hl7/messages: the HL7 v2 message store for operators (logic in interfaces/mllp/admin.py).

An admin user's token is required, also with auth off (as for POST /auth/clients). Errors are masked and
raw messages left out unless ``reveal=true`` is asked for.
A reveal leaves an AuditEvent (who, from where, the query, the patients of the messages shown): raw v2
messages are patient records read outside the FHIR API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fhir_server.api.admin import admin_access
from fhir_server.api.tenants import stack_of
from fhir_server.audit.codes import own
from fhir_server.audit.events import Record
from fhir_server.audit.service import actor_of
from fhir_server.auth.access import AccessContext
from fhir_server.errors import INVALID, Issue, operation_outcome
from fhir_server.rest.server import FhirServer
from interfaces.mllp.admin import BadQuery, message_overview
from interfaces.mllp.store import MessageStore

router = APIRouter()
FHIR_JSON = "application/fhir+json"


@router.get("/admin/hl7/messages", summary="HL7 v2 messages by status: counts, newest first (admin users only)")
async def hl7_messages(request: Request, status: str | None = None, limit: int = 50, before: int | None = None,
                       reveal: bool = False) -> Response:
    server: FhirServer = stack_of(request).fhir
    access, refused = await admin_access(request, "admin/hl7/messages", "HL7 messages")
    if refused is not None:
        return refused
    try:
        body = await run_in_threadpool(message_overview, MessageStore(server.engine), status=status, limit=limit,
                                       before=before, reveal=reveal)
    except BadQuery as exc:
        return JSONResponse(operation_outcome([Issue(INVALID, str(exc), expression=(exc.parameter,))]),
                            status_code=400, media_type=FHIR_JSON)
    if reveal:
        _audit_reveal(server, request, access, body)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _audit_reveal(server: FhirServer, request: Request, access: AccessContext | None, body: dict[str, Any]) -> None:
    if server.audit is None:
        return
    patients = {r for m in body["messages"] for r in m["resources"] if r.startswith("Patient/")}
    address = request.client.host if request.client else None
    server.audit.recorder.record(Record(own("hl7-messages-reveal", "HL7 v2 messages revealed"), "R", 200,
                                        actor_of(access, address), targets=sorted(patients),
                                        query=str(request.url.query)))
