"""Token predicates: code, system|code, |code, system|, :not, :text, :of-type (search.html#token).

``:in`` / ``:not-in`` / ``:above`` / ``:below`` arrive here already expanded into system|code values
(``search/terms.py``); a plain ``code`` element's row carries the system its binding implies (``implied.py``).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, false, or_

from fhir_server.search.parser import Criterion, TokenValue
from fhir_server.search.sql.common import hash_ids, index_ids, like_prefix, matches, missing
from fhir_server.search.tables import TOKEN
from fhir_server.search.values import hash64, normalize


def token_values(rtype: str, param: str, values: list[TokenValue], table: FromClause = TOKEN) -> ColumnElement[bool]:
    """Hash lookups for the values, on the token table (or a table with the same hash columns)."""
    by_value, by_sys_value, by_sys = [], [], []
    for v in values:
        if v.system is None:
            by_value.append(hash64(rtype, param, v.code))
        elif v.code is None:
            by_sys.append(hash64(rtype, param, v.system))
        else:
            by_sys_value.append(hash64(rtype, param, v.system or None, v.code))
    conds = []
    if by_value:
        conds.append(table.c.hash_value.in_(by_value))
    if by_sys_value:
        conds.append(table.c.hash_sys_value.in_(by_sys_value))
    if by_sys:
        conds.append(table.c.hash_sys.in_(by_sys))
    return or_(*conds) if conds else false()  # e.g. an empty ValueSet (:in)


def token_predicate(r: FromClause, rtype: str, c: Criterion, param: str | None = None) -> ColumnElement[bool]:
    code = param or c.param.code
    if c.modifier == "missing":
        return missing(r, TOKEN, rtype, code, bool(c.values[0]))
    if c.modifier == "text":
        texts = [normalize(str(v)) for v in c.values]
        return matches(r, index_ids(TOKEN, rtype, code, or_(
            *(TOKEN.c.text_norm.like(like_prefix(t) + "%", escape="\\") for t in texts))))
    if c.modifier == "of-type":
        code = f"{code}:of-type"
    values = [v for v in c.values if isinstance(v, TokenValue)]
    return matches(r, hash_ids(TOKEN, token_values(rtype, code, values)), negate=c.modifier == "not")
