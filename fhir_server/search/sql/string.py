"""String predicates: accent- and case-insensitive starts-with by default, :exact, :contains."""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, or_

from fhir_server.search.parser import Criterion
from fhir_server.search.sql.common import hash_ids, index_ids, like_prefix, matches, missing
from fhir_server.search.tables import STRING
from fhir_server.search.values import hash64, normalize


def string_predicate(r: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    code = c.param.code
    if c.modifier == "missing":
        return missing(r, STRING, rtype, code, bool(c.values[0]))
    texts = [str(v) for v in c.values]
    if c.modifier == "exact":
        return matches(r, hash_ids(STRING, STRING.c.hash_exact.in_([hash64(rtype, code, t) for t in texts])))
    lead = "%" if c.modifier == "contains" else ""
    return matches(r, index_ids(STRING, rtype, code, or_(
        *(STRING.c.value_norm.like(lead + like_prefix(normalize(t)) + "%", escape="\\") for t in texts))))
