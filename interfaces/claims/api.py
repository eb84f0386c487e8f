"""Our HCX callback endpoints (FastAPI), under ``FHIR_CLAIMS_CALLBACK_PATH`` (the ``endpoint_url`` we
register): ``/coverageeligibility/on_check``, ``/predetermination/on_submit``, ``/preauth/on_submit``,
``/claim/on_submit``, ``/communication/request``, ``/paymentnotice/request``, ``/hcx/on_status`` and NHCX's
``/task/on_submit``, ``/insuranceplan/on_request`` and ``/error/response``.

Each answers at once: 202 with the protocol acknowledgement (``timestamp``, ``correlation_id``,
``api_call_id``) once the body is safely queued, 400 with the error body when it is not a protocol message
at all. Decryption, header checks and applying happen off the request (interfaces/claims/inbound.py).

Tenancy: ``/t/{tenant}/hcx/...`` is hospital ``tenant``'s endpoint_url (the tenant middleware strips the
prefix), so each hospital registers its own; the body is queued in that hospital's outbox and applied there.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fhir_server.api.tenants import stack_of
from fhir_server.rest.server import FhirServer
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from interfaces.claims import protocol as p
from interfaces.claims.bearer import GatewayBearer
from interfaces.claims.envelope import EnvelopeError, protected_header
from interfaces.claims.inbound import TOPIC


def router(server: FhirServer) -> APIRouter:
    settings = server.settings  # process-wide: the callback path and the gateway's certificate
    bearer = GatewayBearer(settings.claims_gateway_cert, settings.claims_gateway_code) \
        if settings.claims_gateway_cert else None
    base = "/" + settings.claims_callback_path.strip("/")
    api = APIRouter(prefix=base if base != "/" else "", tags=["claims"])

    def receive(path: str) -> Any:
        async def handle(request: Request) -> JSONResponse:
            stack = stack_of(request)  # the hospital whose endpoint_url this is
            tenant = stack.fhir
            if tenant.claims is None or getattr(tenant.claims, "hcx", None) is None:
                return JSONResponse(p.Ack(None, None, (p.ERR_INVALID_RECIPIENT, "this hospital does not take "
                                                                                "HCX messages")).body(), 404)
            if bearer is not None and not bearer.verify(request.headers.get("authorization")):
                return JSONResponse(p.Ack(None, None, (p.ERR_ACCESS_DENIED, "the gateway's bearer token is missing "
                                                                            "or invalid")).body(), 401)
            raw = await request.body()
            try:
                body = orjson.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                if path == p.ERROR_RESPONSE and "payload" not in body:
                    body = p.error_response(body, tenant.settings.claims_gateway_code, tenant.claims.participant_code)
                headers = protected_header(str(body["payload"])) if "payload" in body else body
            except EnvelopeError as exc:
                return JSONResponse(p.Ack(None, None, (exc.code, str(exc))).body(), 400)
            except ValueError:
                return JSONResponse(p.Ack(None, None, (p.ERR_INVALID_PAYLOAD, "the body is not a protocol "
                                                                              "message")).body(), 400)
            cid, call = headers.get(p.CORRELATION_ID), headers.get(p.API_CALL_ID)

            def queue(repo: Repository) -> None:
                repo.enqueue(TOPIC, f"{cid}:{call}", {"path": path, "body": body},
                             max_attempts=tenant.settings.claims_max_attempts)

            # Explicit access: queuing the body is all this does; what it may change is decided off the request,
            # by inbound.py, for the one claim its correlation id names.
            tenant.uow.run(queue, write=True, access=as_system("HCX callback received: queued for processing"))
            stack.outbox.wake()
            return JSONResponse(p.Ack(str(cid) if cid else None, str(call) if call else None).body(), 202)
        return handle

    for path in p.INBOUND:
        api.post(path, status_code=202)(receive(path))
    return api
