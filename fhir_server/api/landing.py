"""``GET /``: where a newcomer (or a script, asking for JSON) finds the server's entry points."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from fhir_server import __version__

router = APIRouter()

LINKS = (
    ("FHIR base", "/fhir"),
    ("CapabilityStatement", "/fhir/metadata"),
    ("SMART configuration", "/fhir/.well-known/smart-configuration"),
    ("OpenAPI (Swagger UI)", "/docs"),
    ("Health", "/health/ready"),
    ("Console (operators)", "/console"),
)


@router.get("/", include_in_schema=False)
async def landing(request: Request) -> Response:
    if "html" not in request.headers.get("accept", "") and "json" in request.headers.get("accept", ""):
        return JSONResponse({"name": "fhir-server", "version": __version__, "fhirVersion": "4.0.1",
                             "links": {name: href for name, href in LINKS}})
    items = "\n".join(f'    <li><a href="{escape(href)}">{escape(name)}</a> <code>{escape(href)}</code></li>'
                      for name, href in LINKS)
    return HTMLResponse(f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>fhir-server</title></head>
<body>
  <h1>fhir-server {escape(__version__)}</h1>
  <p>A FHIR R4 (4.0.1) server. The FHIR API is at <code>/fhir</code>.</p>
  <ul>
{items}
  </ul>
</body>
</html>
""")
