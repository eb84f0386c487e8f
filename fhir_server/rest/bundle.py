"""Batch and transaction Bundles POSTed to the base (http.html#transaction, bundle.html).

A transaction runs in one unit of work: all entries commit or none do. Entries are processed in the
spec's order (DELETE, POST, PUT/PATCH, GET/HEAD); ``urn:uuid:`` fullUrls and conditional references
(``Patient?identifier=...``) are resolved before any write, then rewritten in every resource. A batch
runs each entry in its own unit of work; one failing entry does not affect the others.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, NOT_FOUND, PROCESSING, FhirError, Issue
from fhir_server.rest import integrity
from fhir_server.rest import interactions as ix
from fhir_server.rest.request import FhirRequest, FhirResponse, routing
from fhir_server.storage.repository import Repository, instant

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 304: "304 Not Modified"}
ENTRY_HEADERS = {"ifNoneMatch": "if-none-match", "ifModifiedSince": "if-modified-since",
                 "ifMatch": "if-match", "ifNoneExist": "if-none-exist"}


@dataclass
class Entry:
    index: int
    method: str
    path: str
    query: list[tuple[str, str]]
    full_url: str | None
    resource: dict[str, Any] | None
    headers: dict[str, str]
    assigned_id: str | None = None  # POST: the id chosen up front so references can point at it
    matched: bool = False  # POST with ifNoneExist that matched an existing resource


@dataclass
class Plan:
    entries: list[Entry]
    # fullUrl (urn:uuid:..., or an absolute URL) -> "Type/id"
    targets: dict[str, str] = field(default_factory=dict)
    _absolute: list[tuple[str, str]] | None = field(default=None, init=False, repr=False)

    def absolute(self) -> list[tuple[str, str]]:
        """(quoted absolute fullUrl, quoted "Type/id") pairs: found once per Bundle, not once per entry (a
        scan of every fullUrl for each entry made a 500-entry transaction quadratic)."""
        if self._absolute is None:
            self._absolute = [(f'"{url}"', f'"{ref}"') for url, ref in self.targets.items()
                              if not url.startswith("urn:")]
        return self._absolute


def parse_bundle(body: Any, base_url: str) -> tuple[str, list[Entry]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise FhirError(400, INVALID, "POST to the base takes a Bundle of type batch or transaction",
                        ("resourceType",))
    btype = body.get("type")
    if btype not in ("batch", "transaction"):
        raise FhirError(400, INVALID, f"Bundle.type must be batch or transaction, not {btype!r}", ("Bundle.type",))
    raw_entries = body.get("entry") or []
    if not isinstance(raw_entries, list):
        raise FhirError(400, INVALID, "Bundle.entry must be an array", ("Bundle.entry",))
    return btype, [_parse_entry(i, e, base_url) for i, e in enumerate(raw_entries)]


def _parse_entry(index: int, raw: Any, base_url: str) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        raise FhirError(400, INVALID, f"{where} is not an object", (where,))
    request = raw.get("request")
    if not isinstance(request, dict):
        raise FhirError(400, INVALID, f"{where}.request is missing", (f"{where}.request",))
    method = str(request.get("method", "")).upper()
    if method not in ORDER:
        raise FhirError(400, INVALID, f"{where}.request.method {request.get('method')!r} is not a FHIR "
                                      "HTTP verb", (f"{where}.request.method",))
    url = request.get("url")
    if not isinstance(url, str) or not url:
        raise FhirError(400, INVALID, f"{where}.request.url is missing", (f"{where}.request.url",))
    if base_url and url.startswith(base_url + "/"):
        url = url[len(base_url) + 1:]
    parts = urlsplit(url)
    resource = raw.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, dict):
        raise FhirError(400, INVALID, f"{where}: a {method} entry needs a resource", (f"{where}.resource",))
    headers = {h: str(request[k]) for k, h in ENTRY_HEADERS.items() if request.get(k)}
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    return Entry(index, method, parts.path.strip("/"), parse_qsl(parts.query, keep_blank_values=True),
                 full_url, resource, headers)


def plan(repo: Repository, entries: list[Entry], *, atomic: bool) -> Plan:
    """Assign ids and resolve fullUrls (and, in a transaction, conditional matches and references)
    before anything is written. A batch leaves conditional entries to run alone, each in its own unit of
    work, and rewrites references entry by entry so one bad reference fails only its own entry."""
    result = Plan(entries)
    for e in entries:
        conditional = "if-none-exist" in e.headers or (e.method == "PUT" and bool(e.query))
        if not atomic and conditional:
            continue
        try:
            _plan_entry(repo, result, e)
        except FhirError as exc:
            raise _entry_error(exc, e) from exc
    if atomic:
        _reject_duplicates(entries)
        for e in entries:
            rewrite_entry(repo, e, result)
    return result


def _plan_entry(repo: Repository, result: Plan, e: Entry) -> None:
    rtype = e.path.split("/")[0]
    if e.method == "POST" and e.resource is not None:
        ix.check_type_known(rtype)
        existing = None
        if "if-none-exist" in e.headers:
            existing = ix.conditional_match(repo, rtype, ix.criteria_params(e.headers["if-none-exist"]),
                                            "ifNoneExist", create=True)
        e.matched = existing is not None
        e.assigned_id = existing.id if existing else str(uuid.uuid4())
        _target(result, e, f"{rtype}/{e.assigned_id}")
    elif e.method == "PUT" and e.resource is not None:
        segments = e.path.split("/")
        if len(segments) == 2:
            _target(result, e, e.path)
        elif len(segments) == 1 and e.query:
            ix.check_type_known(rtype)
            existing = ix.conditional_match(repo, rtype, ix.criteria_params(e.query), "Conditional update")
            rid = existing.id if existing else (e.resource.get("id") or str(uuid.uuid4()))
            e.path, e.query = f"{rtype}/{rid}", []
            e.resource = {**e.resource, "id": rid}
            _target(result, e, e.path)


def _reject_duplicates(entries: list[Entry]) -> None:
    """A transaction may not touch one resource twice (http.html#trules: identities must be unique)."""
    seen: dict[str, int] = {}
    for e in entries:
        if e.method in ("PUT", "DELETE", "PATCH") and len(e.path.split("/")) == 2 and not e.query:
            if e.path in seen:
                where = f"Bundle.entry[{e.index}]"
                raise FhirError(400, INVALID, f"{where}: {e.path} is already changed by Bundle.entry[{seen[e.path]}]"
                                              "; a transaction may change a resource only once", (where,))
            seen[e.path] = e.index


def rewrite_entry(repo: Repository, e: Entry, p: Plan) -> None:
    if e.resource is not None:
        e.resource = _rewrite(repo, e.resource, p.targets, p.absolute(), e.index)


def _target(result: Plan, e: Entry, reference: str) -> None:
    if e.full_url:
        result.targets[e.full_url] = reference


# A JSON string that is a urn fullUrl; also inside narrative XHTML, where its quotes are escaped (\").
# The opening quote is matched, not looked behind for: a pattern starting with a literal is searched for,
# not tried at every position (4x faster on Synthea resources, bench/RESULTS.md "write path").
_URN_STRING = re.compile(r'"(urn:(?:uuid|oid):[^"\\]+)(?=\\?")')
_URN_REFERENCE = re.compile(r'"reference":"(urn:(?:uuid|oid):[^"]*)"')
_CONDITIONAL_REFERENCE = re.compile(r'"reference":"([A-Z][A-Za-z]*\?[^"]*)"')


def _rewrite(repo: Repository, resource: dict[str, Any], targets: dict[str, str], absolute: list[tuple[str, str]],
             index: int) -> dict[str, Any]:
    """Point every reference (and any uri or narrative link) naming a Bundle entry at its resource, and
    resolve conditional references. Works on the JSON text: one regex pass instead of a Python tree walk,
    the hottest part of a large transaction."""
    text = orjson.dumps(resource).decode()
    changed = False
    if "urn:" in text:
        text = _URN_STRING.sub(lambda m: '"' + targets.get(m.group(1), m.group(1)), text)
        changed = True
        dangling = _URN_REFERENCE.search(text)
        if dangling:
            raise FhirError(400, NOT_FOUND, f"Bundle.entry[{index}]: reference {dangling.group(1)} names no entry "
                                            "of the Bundle", (f"Bundle.entry[{index}]",))
    for quoted_url, quoted_ref in absolute:  # absolute fullUrls (rare): exact string values only
        if quoted_url in text:
            text = text.replace(quoted_url, quoted_ref)
            changed = True
    if "?" in text:
        def resolve(m: re.Match[str]) -> str:
            return f'"reference":"{_resolve_conditional(repo, m.group(1), index)}"'

        resolved = _CONDITIONAL_REFERENCE.sub(resolve, text)
        changed = changed or resolved != text
        text = resolved
    return orjson.loads(text) if changed else resource


def _resolve_conditional(repo: Repository, ref: str, index: int) -> str:
    rtype, _, query = ref.partition("?")
    if rtype not in resource_types():
        return ref
    ids = repo.find_ids(rtype, ix.criteria_params(query), limit=2)
    if len(ids) != 1:
        raise FhirError(412 if ids else 404, PROCESSING,
                        f"Bundle.entry[{index}]: conditional reference {ref} matched {len(ids)} "
                        "resources; it must match exactly one", (f"Bundle.entry[{index}]",))
    return f"{rtype}/{ids[0]}"


def prefetch(repo: Repository, entries: list[Entry]) -> None:
    """Read the current rows of every PUT/DELETE by id in one statement (each would otherwise read its
    own row, one round trip apiece)."""
    references = [(segments[0], segments[1]) for e in entries
                  if e.method in ("PUT", "DELETE") and not e.query and len(segments := e.path.split("/")) == 2]
    if references:
        repo.prefetch_current(references)


def run_entry(server: FhirServer, outer: FhirRequest, repo: Repository, e: Entry) -> FhirResponse:
    headers = {"content-type": "application/fhir+json", **e.headers}
    if outer.header("prefer"):
        headers["prefer"] = outer.header("prefer") or ""
    # auth: an entry is the Bundle caller's own request, with their access (and their address, for audit)
    req = FhirRequest(e.method, e.path, e.query, headers, base_url=outer.base_url, resource=e.resource,
                      access=outer.access, client_address=outer.client_address)
    if e.method == "POST" and e.assigned_id is not None:
        rtype = e.path.split("/")[0]
        if e.matched:
            return ix.existing_response(req, repo.read(rtype, e.assigned_id))
        assert e.resource is not None
        resource = {k: v for k, v in e.resource.items() if k != "id"}
        with routing(req):  # write hooks see the entry's headers (If-None-Exist, Prefer) and add warnings
            version = repo.create(rtype, resource, resource_id=e.assigned_id)
        return ix.write_response(req, version, 201, f"Created {version.reference}")
    return server.route(req, repo)


def response_entry(resp: FhirResponse, method: str, base_url: str, include_resource: bool) -> dict[str, Any]:
    response: dict[str, Any] = {"status": STATUS_TEXT.get(resp.status, str(resp.status))}
    # an asynchronous kick-off (202) answers with its status URL in Content-Location: the entry's location
    location = resp.headers.get("Location") or (resp.headers.get("Content-Location") if resp.status == 202 else None)
    if location:
        response["location"] = location.removeprefix(base_url + "/")
    if "ETag" in resp.headers:
        response["etag"] = resp.headers["ETag"]
    if resp.resource and resp.resource.get("meta", {}).get("lastUpdated"):
        response["lastModified"] = resp.resource["meta"]["lastUpdated"]
    entry: dict[str, Any] = {}
    if resp.outcome is not None:  # a write's warnings (a possible duplicate patient)
        response["outcome"] = resp.outcome
    if resp.resource is not None:
        if method in ("GET", "HEAD"):
            entry["resource"] = resp.resource
        elif resp.resource.get("resourceType") == "OperationOutcome":
            response["outcome"] = resp.resource
        elif include_resource:
            entry["resource"] = resp.resource
    entry["response"] = response
    return entry


def transaction(server: FhirServer, req: FhirRequest, entries: list[Entry]) -> FhirResponse:
    include = (req.prefer("return") or "").lower() == "representation"

    def work(repo: Repository) -> list[FhirResponse | None]:
        p = plan(repo, entries, atomic=True)
        prefetch(repo, p.entries)
        results: list[FhirResponse | None] = [None] * len(entries)
        for e in sorted(p.entries, key=lambda x: ORDER[x.method]):
            try:
                results[e.index] = run_entry(server, req, repo, e)
            except FhirError as exc:
                raise _entry_error(exc, e) from exc
        if req.in_transaction is not None:
            req.in_transaction(repo, results)
        return results

    try:
        results = server.uow.run(work, write=True, access=req.access)
    except integrity.DanglingReferences as exc:  # checked at the end of the unit of work: name the entries
        raise exc.in_bundle({f"{e.path.split('/')[0]}/{e.assigned_id}" if e.assigned_id else e.path: e.index
                             for e in entries}) from exc
    out = [response_entry(r, e.method, req.base_url, include) for e, r in zip(entries, results, strict=True) if r]
    return FhirResponse(200, _response_bundle("transaction-response", out))


def batch(server: FhirServer, req: FhirRequest, entries: list[Entry]) -> FhirResponse:
    include = (req.prefer("return") or "").lower() == "representation"
    p = server.uow.run(lambda repo: plan(repo, entries, atomic=False), write=False, access=req.access)
    out: list[dict[str, Any]] = [{}] * len(entries)
    for e in sorted(p.entries, key=lambda x: ORDER[x.method]):
        write = e.method not in ("GET", "HEAD")

        def run(repo: Repository, e: Entry = e) -> FhirResponse:
            rewrite_entry(repo, e, p)
            return run_entry(server, req, repo, e)

        try:
            out[e.index] = response_entry(server.uow.run(run, write=write, access=req.access), e.method,
                                           req.base_url, include)
        except FhirError as exc:
            out[e.index] = {"response": {"status": str(exc.status), "outcome": _entry_error(exc, e).outcome()}}
    return FhirResponse(200, _response_bundle("batch-response", out))


def _entry_error(exc: FhirError, e: Entry) -> FhirError:
    where = f"Bundle.entry[{e.index}]"
    issues = [Issue(i.code, f"{where} ({e.method} {e.path}): {i.diagnostics}", i.severity,
                    i.expression or (where,), i.details) for i in exc.issues]  # details: a rule's stable code
    return FhirError(exc.status, issues)


def _response_bundle(btype: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": btype,
            "meta": {"lastUpdated": instant(datetime.now(UTC))}, "entry": entries}

