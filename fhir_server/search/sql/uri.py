"""Uri predicates: exact, :below (starts with), :above (the value or one of its parent paths)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, or_

from fhir_server.search.parser import Criterion
from fhir_server.search.sql.common import hash_ids, index_ids, like_prefix, matches, missing
from fhir_server.search.tables import URI
from fhir_server.search.values import hash64


def _parents(url: str) -> list[str]:
    parts = url.rstrip("/").split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 2, -1)]


def uri_predicate(r: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    code = c.param.code
    if c.modifier == "missing":
        return missing(r, URI, rtype, code, bool(c.values[0]))
    urls = [str(v) for v in c.values]
    if c.modifier == "below":
        return matches(r, index_ids(URI, rtype, code, or_(
            *(URI.c.value.like(like_prefix(u) + "%", escape="\\") for u in urls))))
    if c.modifier == "above":
        urls = [p for u in urls for p in _parents(u)]
    return matches(r, hash_ids(URI, URI.c.hash_uri.in_([hash64(rtype, code, u) for u in urls])))
