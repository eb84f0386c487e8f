"""Type-level search, interim: ``_id`` and ``identifier`` (what conditional interactions need), ``_count``
and cursor paging. The search issue replaces the Finder behind it with the full R4 search."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fhir_server.errors import NOT_SUPPORTED, FhirError, Issue, operation_outcome
from fhir_server.rest.history import page_size
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository, instant

SUPPORTED = {"_id", "identifier"}
CONTROL = {"_count", "_cursor", "_format", "_pretty"}


def search_type(req: FhirRequest, repo: Repository, resource_type: str, params: list[tuple[str, str]], *,
                default_count: int, max_count: int) -> FhirResponse:
    count = page_size(req, default_count, max_count)
    criteria: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    for name, value in params:
        if name in CONTROL:
            continue
        (criteria if name in SUPPORTED else ignored).append((name, value))
    strict = (req.prefer("handling") or "").lower() == "strict"
    if ignored and strict:
        raise FhirError(400, [Issue(NOT_SUPPORTED, f"Unknown or unsupported search parameter '{n}'",
                                    expression=(n,)) for n, _ in ignored])
    after = req.param("_cursor")
    ids = repo.find_ids(resource_type, criteria, limit=count + 1, after=after) if count else []
    more = len(ids) > count
    ids = ids[:count]
    found = {v.id: v for v in repo.read_many([(resource_type, i) for i in ids])}
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{req.base_url}/{resource_type}/{i}", "resource": found[i].content, "search": {"mode": "match"}}
        for i in ids if i in found]
    if ignored:
        entries.append({"resource": operation_outcome([
            Issue(NOT_SUPPORTED, f"Search parameter '{n}' is not supported and was ignored", severity="warning",
                  expression=(n,)) for n, _ in ignored]), "search": {"mode": "outcome"}})
    used = [(k, v) for k, v in params if k != "_cursor" and (k, v) not in ignored]
    links = [{"relation": "self", "url": _url(req, resource_type, used)}]
    if more and ids:
        links.append({"relation": "next", "url": _url(req, resource_type, [*used, ("_cursor", ids[-1])])})
    bundle = {"resourceType": "Bundle", "type": "searchset", "meta": {"lastUpdated": instant(datetime.now(UTC))},
              "link": links, "entry": entries}
    return FhirResponse(200, bundle)


def _url(req: FhirRequest, path: str, query: list[tuple[str, str]]) -> str:
    qs = urlencode(query)
    return f"{req.base_url}/{path}" + (f"?{qs}" if qs else "")
