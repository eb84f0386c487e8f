"""An OpenAPI 3.0 document of the FHIR API, generated from the CapabilityStatement (and, for the levels an
operation runs at, the operation registry): one source of truth, as fhirstarter and HAPI do.

Each resource type gets its interactions (read, vread, update, patch, delete, history, create, search by GET
and by POST ``_search`` with the type's search parameters) and its operations; the system level gets
transaction/batch, history, search and the system operations. Operation ids are ``<interaction>-<Type>``
(``read-Patient``), ``<interaction>`` at the system level and ``op-<name>-<level>[-<Type>]`` for operations,
so each is unique. Bodies are ``application/fhir+json`` objects whose ``resourceType`` is named; the
resource definitions themselves are the FHIR specification's, linked from each schema.
"""

from __future__ import annotations

from typing import Any

from fhir_server.rest.operations import Operation, OperationRegistry

FHIR_JSON = "application/fhir+json"
_RESULT_PARAMS = ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total")
_SEARCH_TYPES = {"number": "number", "date": "string", "string": "string", "token": "string",
                 "reference": "string", "composite": "string", "quantity": "string", "uri": "string",
                 "special": "string"}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9\\-.]{1,64}$"}}
_VID = {"name": "vid", "in": "path", "required": True, "schema": {"type": "string"}}


SYSTEM = "system"  # ``part`` naming the system level (lower case: never a resource type)


def openapi(statement: dict[str, Any], operations: OperationRegistry, *, part: str | None = None) -> dict[str, Any]:
    """The document for the whole API, or one ``part`` of it: a resource type or ``system``. The whole API
    names every type's search parameters and is large, so the browser page loads one part at a time."""
    rest = statement["rest"][0]
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Resource": _schema("Resource"), "Bundle": _schema("Bundle"),
                               "OperationOutcome": _schema("OperationOutcome"), "Parameters": _schema("Parameters")}
    if part in (None, SYSTEM):
        _system(paths, rest, operations)
    for resource in rest["resource"]:
        rtype = resource["type"]
        if part is not None and rtype != part:
            continue
        schemas[rtype] = _schema(rtype)
        _type(paths, resource, operations)
    title = "FHIR R4 API" + (f": {part}" if part else "")
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": title, "version": statement.get("software", {}).get("version", ""),
                 "description": "Generated from this server's CapabilityStatement (GET /fhir/metadata)."},
        "servers": [{"url": statement.get("implementation", {}).get("url") or "/fhir"}],
        "paths": paths,
        "components": {"schemas": schemas, "responses": {"Error": _error()}},
    }
    security = rest.get("security")
    if security:
        doc["components"]["securitySchemes"] = {"smart": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                                          "description": "SMART on FHIR access token"}}
        doc["security"] = [{"smart": []}]
    return doc


def _schema(rtype: str) -> dict[str, Any]:
    return {"type": "object", "required": ["resourceType"], "additionalProperties": True,
            "properties": {"resourceType": {"type": "string", "enum": [rtype]}},
            "externalDocs": {"url": f"http://hl7.org/fhir/R4/{rtype.lower()}.html"}}


def _error() -> dict[str, Any]:
    return {"description": "An OperationOutcome naming what is wrong",
            "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}


def _body(rtype: str) -> dict[str, Any]:
    return {"required": True, "content": {FHIR_JSON: {"schema": {"$ref": f"#/components/schemas/{rtype}"}}}}


def _ok(rtype: str, status: str = "200", description: str = "OK") -> dict[str, Any]:
    return {status: {"description": description,
                     "content": {FHIR_JSON: {"schema": {"$ref": f"#/components/schemas/{rtype}"}}}},
            "default": {"$ref": "#/components/responses/Error"}}


def _op(op_id: str, summary: str, tag: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses, **extra}


def _search_params(resource: dict[str, Any]) -> list[dict[str, Any]]:
    params = [{"name": p["name"], "in": "query", "required": False, "description": p.get("documentation", p["type"]),
               "schema": {"type": _SEARCH_TYPES.get(p["type"], "string")}} for p in resource.get("searchParam", [])]
    names = {p["name"] for p in params}
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
               for n in _RESULT_PARAMS if n not in names]
    return params


def _type(paths: dict[str, dict[str, Any]], resource: dict[str, Any], operations: OperationRegistry) -> None:
    t = resource["type"]
    codes = {i["code"] for i in resource.get("interaction", [])}
    base, inst = paths.setdefault(f"/{t}", {}), paths.setdefault(f"/{t}/{{id}}", {})
    if "search-type" in codes:
        base["get"] = _op(f"search-type-{t}", f"Search {t}", t, _ok("Bundle"), parameters=_search_params(resource))
        paths[f"/{t}/_search"] = {"post": _op(
            f"search-type-post-{t}", f"Search {t} (criteria in a form body)", t, _ok("Bundle"),
            requestBody={"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}})}
    if "create" in codes:
        base["post"] = _op(f"create-{t}", f"Create a {t}", t, _ok(t, "201", "Created"), requestBody=_body(t))
    if "read" in codes:
        inst["get"] = _op(f"read-{t}", f"Read a {t}", t, _ok(t), parameters=[_ID])
    if "update" in codes:
        inst["put"] = _op(f"update-{t}", f"Update (or create) a {t}", t, _ok(t), parameters=[_ID],
                          requestBody=_body(t))
    if "patch" in codes:
        inst["patch"] = _op(f"patch-{t}", f"Patch a {t} (JSON Patch)", t, _ok(t), parameters=[_ID], requestBody={
            "content": {"application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}}}})
    if "delete" in codes:
        inst["delete"] = _op(f"delete-{t}", f"Delete a {t}", t, {"204": {"description": "Deleted"},
                                                                 "default": {"$ref": "#/components/responses/Error"}},
                             parameters=[_ID])
    if "history-instance" in codes:
        paths[f"/{t}/{{id}}/_history"] = {"get": _op(f"history-instance-{t}", f"History of a {t}", t, _ok("Bundle"),
                                                     parameters=[_ID])}
    if "vread" in codes:
        paths[f"/{t}/{{id}}/_history/{{vid}}"] = {"get": _op(f"vread-{t}", f"Read a version of a {t}", t, _ok(t),
                                                             parameters=[_ID, _VID])}
    if "history-type" in codes:
        paths[f"/{t}/_history"] = {"get": _op(f"history-type-{t}", f"History of all {t}", t, _ok("Bundle"))}
    for op in (o for o in operations.operations.values() if o.types is None or t in o.types):
        _operation(paths, op, t, f"/{t}/${op.name}", "type")
        if op.instance:
            _operation(paths, op, t, f"/{t}/{{id}}/${op.name}", "instance")
    for key in [k for k, v in paths.items() if not v]:
        del paths[key]


def _system(paths: dict[str, dict[str, Any]], rest: dict[str, Any], operations: OperationRegistry) -> None:
    codes = {i["code"] for i in rest.get("interaction", [])}
    root: dict[str, Any] = {"get": _op("search-system", "Search all types (_type)", "system", _ok("Bundle"))}
    if codes & {"transaction", "batch"}:
        root["post"] = _op("transaction", "A transaction or batch Bundle", "system", _ok("Bundle"),
                           requestBody=_body("Bundle"))
    paths["/"] = root
    if "history-system" in codes:
        paths["/_history"] = {"get": _op("history-system", "History of everything", "system", _ok("Bundle"))}
    paths["/metadata"] = {"get": _op("capabilities", "The CapabilityStatement", "system",
                                     _ok("Resource"))}
    for op in (o for o in operations.operations.values() if o.system):
        _operation(paths, op, None, f"/${op.name}", "system")


def _operation(paths: dict[str, dict[str, Any]], op: Operation, rtype: str | None, path: str, level: str) -> None:
    tag = rtype or "system"
    suffix = f"-{rtype}" if rtype else ""
    params = [_ID] if level == "instance" else []
    entry = paths.setdefault(path, {})
    docs = {"externalDocs": {"url": op.definition}}
    entry["post"] = _op(f"op-{op.name}-{level}{suffix}", f"${op.name} ({level} level)", tag, _ok("Resource"),
                        parameters=params, requestBody={"required": False, "content": {
                            FHIR_JSON: {"schema": {"$ref": "#/components/schemas/Parameters"}}}}, **docs)
    if not op.affects_state:
        entry["get"] = _op(f"op-{op.name}-{level}-get{suffix}", f"${op.name} ({level} level, parameters in the URL)",
                           tag, _ok("Resource"), parameters=params, **docs)
