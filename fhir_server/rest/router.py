"""Routes a FhirRequest to its interaction (http.html's URL patterns); used for HTTP and Bundle entries.

The router knows no web framework. ``FhirServer.handle`` wraps one request in one unit of work;
``route`` runs inside a unit of work that already exists (a transaction Bundle's entries).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, NOT_FOUND, NOT_SUPPORTED, FhirError
from fhir_server.rest import interactions as ix
from fhir_server.rest.history import history
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.rest.search import search_compartment, search_system, search_type
from fhir_server.storage.repository import Repository

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

Handler = Callable[[FhirRequest, Repository], FhirResponse]
READ_METHODS = {"GET", "HEAD"}
_OP = re.compile(r"^\$[A-Za-z][A-Za-z0-9\-]*$")


def not_allowed(method: str, path: str) -> FhirError:
    return FhirError(405, NOT_SUPPORTED, f"{method} is not supported on /{path}")


def route(server: FhirServer, req: FhirRequest, repo: Repository) -> FhirResponse:
    method = "GET" if req.method == "HEAD" else req.method
    if "\x00" in req.path:  # no id, type or operation name holds U+0000 (PostgreSQL cannot even compare one)
        raise FhirError(400, INVALID, "The URL path holds U+0000 (NUL)", ("url",))
    parts = [p for p in req.path.strip("/").split("/") if p] if req.path.strip("/") else []
    s = server.settings
    page = {"default_count": s.default_page_size, "max_count": s.max_page_size}
    if not parts or (parts == ["_search"] and method == "POST"):
        if method != "GET" and parts != ["_search"]:  # POST to the base is a Bundle: FhirServer.handle
            raise not_allowed(req.method, req.path)
        return search_system(req, repo, req.query, **page)
    head = parts[0]
    if head == "metadata" and len(parts) == 1:
        if method != "GET":
            raise not_allowed(req.method, req.path)
        return server.capability_response(req, repo)
    if head == "_history" and len(parts) == 1:
        if method != "GET":
            raise not_allowed(req.method, req.path)
        return history(req, repo, None, None, **page)
    if _OP.match(head):
        return server.operations.invoke(req, repo, head[1:], None, None)
    ix.check_type_known(head)
    rtype = head
    if rtype == "Binary" and (binary := server.binary.route(req, repo)) is not None:
        return binary  # raw content in and out (fhir_server.binary)
    if len(parts) == 1:
        if method == "GET":
            return search_type(req, repo, rtype, req.query, **page)
        handlers: dict[str, Handler] = {
            "POST": lambda r, rp: ix.create(r, rp, rtype),
            "PUT": lambda r, rp: ix.conditional_update(r, rp, rtype),
            "DELETE": lambda r, rp: ix.conditional_delete(r, rp, rtype),
            "PATCH": lambda r, rp: ix.conditional_patch(r, rp, rtype),
        }
        if method not in handlers:
            raise not_allowed(req.method, req.path)
        return handlers[method](req, repo)
    second = parts[1]
    if len(parts) == 2 and second == "_search":
        if method != "POST":
            raise not_allowed(req.method, req.path)
        return search_type(req, repo, rtype, req.query, **page)
    if len(parts) == 2 and second == "_history":
        if method != "GET":
            raise not_allowed(req.method, req.path)
        return history(req, repo, rtype, None, **page)
    if _OP.match(second):
        return server.operations.invoke(req, repo, second[1:], rtype, None)
    rid = second
    if len(parts) == 2:
        instance: dict[str, Handler] = {
            "GET": lambda r, rp: ix.read(r, rp, rtype, rid),
            "PUT": lambda r, rp: ix.update(r, rp, rtype, rid),
            "DELETE": lambda r, rp: ix.delete(r, rp, rtype, rid),
            "PATCH": lambda r, rp: ix.patch(r, rp, rtype, rid),
        }
        if method not in instance:
            raise not_allowed(req.method, req.path)
        return instance[method](req, repo)
    third = parts[2]
    if third == "_history" and len(parts) in (3, 4):
        if method != "GET":
            raise not_allowed(req.method, req.path)
        if len(parts) == 3:
            return history(req, repo, rtype, rid, **page)
        return ix.vread(req, repo, rtype, rid, parts[3])
    if _OP.match(third) and len(parts) == 3:
        return server.operations.invoke(req, repo, third[1:], rtype, rid)
    if third in resource_types() and ((len(parts) == 3 and method == "GET") or
                                      (parts[3:] == ["_search"] and method == "POST")):
        return search_compartment(req, repo, rtype, rid, third, req.query, **page)
    raise FhirError(404, NOT_FOUND, f"No FHIR interaction matches /{req.path}")
