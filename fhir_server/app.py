"""create_app(settings): the FastAPI application around the FHIR core."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_server.api import admin, auth, docs, fhir, health, hl7_admin, landing, metrics, platform, subscriptions_ws
from fhir_server.api.access_log import AccessLogMiddleware
from fhir_server.api.fhir_fast_path import FhirFastPath
from fhir_server.api.tenants import TenantRouting
from fhir_server.config import Settings, get_settings
from fhir_server.console import install as install_console
from fhir_server.errors import EXCEPTION, INVALID, NOT_FOUND, NOT_SUPPORTED, FhirError, Issue, operation_outcome
from fhir_server.jobs.background import Background
from fhir_server.rest.server import FhirServer
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.tenancy.model import DEFAULT
from fhir_server.tenancy.sharing import install_all as install_sharing
from fhir_server.tenancy.stacks import Tenants, TenantStack

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, server: FhirServer | None = None,
               dispatcher: OutboxDispatcher | None = None) -> FastAPI:
    settings = settings or get_settings()
    server = server or FhirServer(settings)
    dispatcher = dispatcher or OutboxDispatcher(server.engine, lease=timedelta(seconds=settings.outbox_lease_seconds),
                                                lanes=settings.outbox_lanes)
    background = Background(server, dispatcher, settings)  # celery workers, or in-process runners (embedded)
    from fhir_server.jobs.topics import install_outbox_topics

    install_outbox_topics(server, dispatcher)  # every outbox topic (HL7 orders, subscriptions), as the worker
    # Tenancy: the default tenant's services are these; another hospital's are made on its first request.
    tenants = Tenants(settings, TenantStack(DEFAULT, server, dispatcher, background))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tenants.start()
        listener = None
        if settings.mllp_port:  # HL7 v2 over MLLP beside HTTP (interfaces/mllp)
            from interfaces.mllp.listener import MllpListener

            listener = MllpListener(server, tenants=tenants)  # every hospital, routed by MSH-6
            await listener.start()
        yield
        if listener is not None:
            await listener.stop()
        tenants.stop()  # background work stops, queued AuditEvents are written

    # /docs is ours (api/docs.py): Swagger UI from local files, with the FHIR API beside these routes.
    app = FastAPI(title="FHIR R4 server", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.fhir = server  # the default tenant's; routes take the request's own with stack_of(request)
    app.state.outbox = dispatcher
    app.state.tenants = tenants
    # Innermost middleware (added first): a FHIR request goes straight to the FHIR endpoint, inside CORS,
    # tenancy and the access log, past the router's walk over every other route (api/fhir_fast_path.py).
    app.add_middleware(FhirFastPath, endpoint=fhir.fhir_endpoint, methods=fhir.METHODS, own=fhir.router.routes)
    auth.install(app, server)  # SMART on FHIR: /auth/*, /fhir/.well-known/* (before the catch-all), CORS
    install_sharing(tenants)  # a patient shared between hospitals: $share and friends (tenancy/sharing.py)
    app.include_router(admin.router)  # /admin/outbox (operators)
    app.include_router(hl7_admin.router)  # /admin/hl7/messages (operators of lab interfaces)
    app.include_router(platform.router)  # /platform/tenants: the hospitals on this server (FHIR_PLATFORM_TOKEN)
    app.include_router(subscriptions_ws.router)  # the Subscription websocket channel
    app.include_router(landing.router)  # GET /: links to the entry points
    install_console(app)  # /console: the operators' pages (fhir_server/console)
    docs.install(app)  # /docs (Swagger UI, local files), /openapi/fhir.json (from the CapabilityStatement)
    app.include_router(health.router)  # /health/live, /health/ready
    app.include_router(metrics.router)  # /metrics (Prometheus)
    from interfaces.claims.setup import mount as mount_claims

    mount_claims(app, server, dispatcher)  # HCX callbacks under FHIR_CLAIMS_CALLBACK_PATH, when configured
    from interfaces.abdm.api import mount as mount_abdm

    mount_abdm(app, server)  # ABDM HIP/HIU endpoints when FHIR_ABDM_* configure it (interfaces/abdm)
    app.include_router(fhir.router)
    app.state.metrics = metrics.HttpMetrics()
    # /fhir/{tenant}/... and /t/{tenant}/...: the tenant's services for every route inside (api/tenants.py).
    app.add_middleware(TenantRouting, tenants=tenants)
    # Outermost: the request id covers everything inside; each finished request also feeds /metrics.
    app.add_middleware(AccessLogMiddleware, observe=app.state.metrics.observe)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Routing's own refusals (404, 405) under the FHIR base come back as OperationOutcome too."""
        if not request.url.path.startswith("/fhir"):
            return await http_exception_handler(request, exc)
        code = NOT_FOUND if exc.status_code == 404 else NOT_SUPPORTED if exc.status_code == 405 else INVALID
        return JSONResponse(operation_outcome([Issue(code, str(exc.detail))]), status_code=exc.status_code,
                            headers=exc.headers, media_type="application/fhir+json")

    @app.exception_handler(FhirError)
    async def fhir_error(_request: Request, exc: FhirError) -> Response:
        """A FhirError outside the FHIR routes' own handling (a suspended hospital's token request, say)."""
        return JSONResponse(exc.outcome(), status_code=exc.status, headers=exc.headers,
                            media_type="application/fhir+json")

    @app.exception_handler(Exception)
    async def unhandled(_request: Request, exc: Exception) -> Response:
        log.error("unhandled error: %s", type(exc).__name__)
        return JSONResponse(operation_outcome([Issue(EXCEPTION, "Internal server error")]), status_code=500,
                            media_type="application/fhir+json")

    return app
