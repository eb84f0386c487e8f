"""The API's documentation, served by the server itself (no CDN): Swagger UI from the swagger-ui-bundle
package at ``/docs``, the FHIR API's OpenAPI at ``/openapi/fhir.json[?part=Patient|system]`` (generated from
the CapabilityStatement, fhir_server/rest/openapi.py) and FastAPI's own ``/openapi.json`` for the other
routes (auth, admin, health)."""

from __future__ import annotations

import json
from html import escape

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from swagger_ui_bundle import swagger_ui_path

from fhir_server.api.fhir import base_url
from fhir_server.api.tenants import stack_of
from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, Issue, operation_outcome
from fhir_server.rest.openapi import SYSTEM, openapi
from fhir_server.rest.server import FhirServer

router = APIRouter()
ASSETS = "/docs/assets"


def install(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    app.include_router(router)


@router.get("/openapi/fhir.json", include_in_schema=False)
async def fhir_openapi(request: Request, part: str | None = None) -> Response:
    if part is not None and part != SYSTEM and part not in resource_types():
        return JSONResponse(operation_outcome([Issue(INVALID, f"part must be a resource type or {SYSTEM!r}, "
                                                              f"not {part!r}", expression=("part",))]),
                            status_code=400, media_type="application/fhir+json")
    server: FhirServer = stack_of(request).fhir
    statement = server.capability_statement(base_url(request, server))
    doc = await run_in_threadpool(openapi, statement, server.operations, part=part)
    return JSONResponse(doc)


@router.get("/docs", include_in_schema=False)
async def swagger_ui() -> HTMLResponse:
    urls = [{"name": "FHIR: system level", "url": f"/openapi/fhir.json?part={SYSTEM}"}]
    urls += [{"name": f"FHIR: {t}", "url": f"/openapi/fhir.json?part={t}"} for t in sorted(resource_types())]
    urls.append({"name": "Server: auth, admin, operations", "url": "/openapi.json"})
    config = json.dumps({"urls": urls, "urls.primaryName": "FHIR: Patient", "dom_id": "#swagger-ui",
                         "deepLinking": True})
    return HTMLResponse(f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>fhir-server API</title>
  <link rel="stylesheet" href="{escape(ASSETS)}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{escape(ASSETS)}/swagger-ui-bundle.js"></script>
  <script src="{escape(ASSETS)}/swagger-ui-standalone-preset.js"></script>
  <script>
    const config = {config};
    window.ui = SwaggerUIBundle({{...config, presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
                                 layout: "StandaloneLayout"}});
  </script>
</body>
</html>
""")
