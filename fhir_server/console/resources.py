"""The admins' resource browser: search any type, read a resource with its history, follow its references.
Every request goes through the FHIR core with the admin's own access (read, search and history are audited
there as any FHIR interaction is)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool

from fhir_server.console.session import Session, place
from fhir_server.console.web import guard, message, page, server_of
from fhir_server.definitions import resource_types
from fhir_server.rest.request import FhirRequest, FhirResponse

router = APIRouter(include_in_schema=False)
REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")
PAGE = 50


def _fhir(request: Request, session: Session, path: str, query: list[tuple[str, str]]) -> FhirResponse:
    req = FhirRequest("GET", path, query, base_url=place(request).fhir_base, access=session.access,
                      client_address=session.address)
    return server_of(request).handle(req)


def _label(resource: dict[str, Any]) -> str:
    """A line saying what the resource is: a name, a code's text, a status."""
    names = resource.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        n = names[0]
        return n.get("text") or " ".join([*n.get("given", []), n.get("family", "")]).strip()
    if isinstance(names, str):
        return names
    code = resource.get("code")
    if isinstance(code, dict):
        return str(code.get("text") or next((c.get("display") or c.get("code") for c in code.get("coding", [])
                                             if isinstance(c, dict)), ""))
    return str(resource.get("status", ""))


def json_html(value: Any, console: str, indent: int = 0) -> Markup:
    """The resource as indented JSON, escaped, each ``reference`` to a resource here a link to it."""
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return Markup("{}")
        items = []
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and REFERENCE.match(item):
                match = REFERENCE.match(item)
                assert match is not None
                href = f"{console}/resources/{quote(match.group(1))}/{quote(match.group(2))}"
                shown = Markup('<a href="{}">{}</a>').format(href, f'"{item}"')
            else:
                shown = json_html(item, console, indent + 1)
            items.append(Markup("{}{}: {}").format(Markup(inner), f'"{key}"', shown))
        return Markup("{\n") + Markup(",\n").join(items) + Markup("\n{}}}").format(Markup(pad))
    if isinstance(value, list):
        if not value:
            return Markup("[]")
        parts = [Markup("{}{}").format(Markup(inner), json_html(v, console, indent + 1)) for v in value]
        return Markup("[\n") + Markup(",\n").join(parts) + Markup("\n{}]").format(Markup(pad))
    if isinstance(value, str):
        return escape('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    if value is None:
        return Markup("null")
    if isinstance(value, bool):
        return Markup("true" if value else "false")
    return escape(str(value))


@router.get("/console/resources")
async def search(request: Request) -> Response:
    session = await guard(request, admin=True)
    if isinstance(session, Response):
        return session
    rtype = request.query_params.get("type", "")
    criteria = request.query_params.get("criteria", "").strip()
    types = sorted(resource_types())
    context: dict[str, Any] = {"types": types, "rtype": rtype, "criteria": criteria, "rows": None, "total": None,
                               "problem": None}
    if rtype:
        if rtype not in resource_types():
            return message(request, session, 400, "Resources", f"{rtype} is not a FHIR R4 resource type.")
        query = [*parse_qsl(criteria.lstrip("?"), keep_blank_values=True), ("_count", str(PAGE))]
        resp = await run_in_threadpool(_fhir, request, session, rtype, query)
        body = resp.resource or {}
        if resp.status != 200:
            context["problem"] = "; ".join(str(i.get("diagnostics", "")) for i in body.get("issue", [])) or \
                f"The search answered {resp.status}."
        else:
            found = [e["resource"] for e in body.get("entry", []) if isinstance(e.get("resource"), dict)]
            outcomes = [r for r in found if r.get("resourceType") == "OperationOutcome"]  # e.g. ignored params
            context["problem"] = "; ".join(str(i.get("diagnostics", "")) for o in outcomes
                                           for i in o.get("issue", [])) or None
            context["rows"] = [(r["resourceType"], r.get("id"), r.get("meta", {}).get("lastUpdated", ""), _label(r))
                               for r in found if r.get("resourceType") != "OperationOutcome"]
            context["total"] = body.get("total")
    return page(request, session, "resources.html", title="Resources", **context)


@router.get("/console/resources/{rtype}/{rid}")
async def read(request: Request, rtype: str, rid: str) -> Response:
    session = await guard(request, admin=True)
    if isinstance(session, Response):
        return session
    if rtype not in resource_types():
        return message(request, session, 400, "Resources", f"{rtype} is not a FHIR R4 resource type.")
    current, history = await run_in_threadpool(lambda: (
        _fhir(request, session, f"{rtype}/{rid}", []),
        _fhir(request, session, f"{rtype}/{rid}/_history", [("_count", str(PAGE))])))
    here = place(request).path
    if current.status not in (200, 410) and history.status != 200:
        body = current.resource or {}
        text = "; ".join(str(i.get("diagnostics", "")) for i in body.get("issue", [])) or f"HTTP {current.status}"
        return message(request, session, current.status, f"{rtype}/{rid}", text)
    versions = []
    for entry in (history.resource or {}).get("entry", []) if history.status == 200 else []:
        res = entry.get("resource")
        versions.append({"version": (res or {}).get("meta", {}).get("versionId") or entry.get("request", {}).get("url"),
                         "updated": (res or {}).get("meta", {}).get("lastUpdated", ""),
                         "method": entry.get("request", {}).get("method", ""),
                         "json": json_html(res, here) if res else Markup("(deleted)")})
    shown = json_html(current.resource, here) if current.status == 200 else None
    return page(request, session, "resource.html", title=f"{rtype}/{rid}", rtype=rtype, rid=rid, shown=shown,
                deleted=current.status == 410, versions=versions)
