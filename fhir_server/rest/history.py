"""History at instance, type and system level (http.html#history): newest first, cursor-paged."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fhir_server.errors import INVALID, FhirError, not_found
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository, Version, instant

CURSOR = "_cursor"
METHOD_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


def parse_instant(value: str, name: str) -> datetime:
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise FhirError(400, INVALID, f"{name}: {value!r} is not a FHIR instant or dateTime", (name,)) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # dateTime without zone: take it as UTC
    return parsed


def parse_count(value: str | None, default: int, maximum: int) -> int:
    """``_count`` for history and search: a whole number >= 0, capped at ``maximum``."""
    if value is None:
        return default
    try:
        count = int(value)
    except ValueError:
        raise FhirError(400, INVALID, f"_count {value!r} is not a whole number", ("_count",)) from None
    if count < 0:
        raise FhirError(400, INVALID, "_count may not be negative", ("_count",))
    return min(count, maximum)


def history(req: FhirRequest, repo: Repository, resource_type: str | None, resource_id: str | None, *,
            default_count: int, max_count: int) -> FhirResponse:
    since = req.param("_since")
    at = req.param("_at")
    cursor = req.param(CURSOR)
    count = parse_count(req.param("_count"), default_count, max_count)
    before_pk = None
    if cursor is not None:
        try:
            before_pk = int(cursor)
        except ValueError:
            raise FhirError(400, INVALID, f"Invalid paging cursor {cursor!r}", (CURSOR,)) from None
    # auth: 403 for a resource the caller may not read, before 404 and before any version is counted
    if resource_type and resource_id and repo.visible(resource_type, resource_id) is None:
        raise not_found(resource_type, resource_id)
    rows, more = repo.history(resource_type, resource_id,
                              since=parse_instant(since, "_since") if since else None,
                              at=parse_instant(at, "_at") if at else None,
                              before_pk=before_pk, count=max(count, 1))
    if count == 0:
        rows, more = [], False
    path = "/".join(p for p in (resource_type, resource_id, "_history") if p)
    base_query = [(k, v) for k, v in req.query if k != CURSOR]
    links = [{"relation": "self", "url": _url(req, path, req.query)}]
    if more and rows:
        links.append({"relation": "next", "url": _url(req, path, [*base_query, (CURSOR, str(rows[-1][0]))])})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "meta": {"lastUpdated": instant(datetime.now(UTC))},
    }
    if resource_type and resource_id:
        bundle["total"] = repo.history_total(resource_type, resource_id)
    bundle["link"] = links
    bundle["entry"] = [history_entry(req, v) for _, v in rows]
    return FhirResponse(200, bundle)


def history_entry(req: FhirRequest, version: Version) -> dict[str, Any]:
    full_url = f"{req.base_url}/{version.reference}"
    entry: dict[str, Any] = {"fullUrl": full_url}
    if version.content is not None:
        entry["resource"] = version.content
    method = "DELETE" if version.deleted else ("POST" if version.method == "POST" else "PUT")
    entry["request"] = {"method": method,
                        "url": version.resource_type if method == "POST" else version.reference}
    status = METHOD_STATUS.get(version.method, "200 OK")
    if version.version_id == 1 and not version.deleted:
        status = "201 Created"
    entry["response"] = {"status": status, "etag": version.etag,
                         "lastModified": instant(version.last_updated)}
    return entry


def _url(req: FhirRequest, path: str, query: list[tuple[str, str]]) -> str:
    qs = urlencode(query)
    return f"{req.base_url}/{path}" + (f"?{qs}" if qs else "")
