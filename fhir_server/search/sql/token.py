"""Token predicates: code, system|code, |code, system|, :not, :text, :of-type (search.html#token).

``:in`` / ``:not-in`` / ``:above`` / ``:below`` arrive here already expanded into system|code values
(``search/terms.py``); a plain ``code`` element's row carries the system its binding implies (``implied.py``).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, Select, false, or_, select, tuple_

from fhir_server.search.parser import Criterion, TokenValue
from fhir_server.search.sql.common import hash_ids, index_ids, like_prefix, matches, missing
from fhir_server.search.tables import TOKEN
from fhir_server.search.values import hash64, normalize
from terminology.tables import CLOSURE, CODE_SYSTEM


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
    if c.modifier in ("above", "below"):  # too large to list (search/terms.py): join on the is-a closure
        return matches(r, index_ids(TOKEN, rtype, code, or_(*(
            tuple_(TOKEN.c.system, TOKEN.c.code).in_(_subsumed(v, below=c.modifier == "below"))
            for v in c.values if isinstance(v, TokenValue)))))
    if c.modifier == "of-type":
        code = f"{code}:of-type"
    values = [v for v in c.values if isinstance(v, TokenValue)]
    return matches(r, hash_ids(TOKEN, token_values(rtype, code, values)), negate=c.modifier == "not")


def _subsumed(v: TokenValue, *, below: bool) -> Select[tuple[str, str]]:
    """(system, code) of ``v`` and its descendants (below) or ancestors (above), from the closure table."""
    other, this = (CLOSURE.c.descendant, CLOSURE.c.ancestor) if below else (CLOSURE.c.ancestor, CLOSURE.c.descendant)
    stmt = select(CODE_SYSTEM.c.url, other).select_from(
        CLOSURE.join(CODE_SYSTEM, CODE_SYSTEM.c.resource_id == CLOSURE.c.resource_id)).where(this == v.code)
    return stmt.where(CODE_SYSTEM.c.url == v.system) if v.system else stmt
