"""Reference predicates: id, Type/id, absolute URL, :Type, :identifier, chaining and _has.

Chaining (``subject:Patient.name=x``) becomes: the reference rows whose target is one of the Patients
matching ``name=x``, a nested subquery on the target type; ``_has:Observation:patient:code=x`` is the
reverse: resources that are the target of a matching Observation's ``patient`` reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, and_, or_, select

from fhir_server.search.parser import Criterion, HasCriterion, ReferenceValue, TokenValue
from fhir_server.search.sql.common import SqlContext, hash_ids, index_ids, matches, missing
from fhir_server.search.sql.token import token_values
from fhir_server.search.tables import REFERENCE, TOKEN

# (resource type, criteria) -> SELECT id of the matching resources
SubSearch = Callable[[str, list[Criterion | HasCriterion]], Select[tuple[str]]]


def _value_condition(v: ReferenceValue) -> ColumnElement[bool]:
    if v.url is not None:  # the parser made references to this server relative: this one is elsewhere
        return REFERENCE.c.target_url == v.url
    conds = [REFERENCE.c.target_id == v.id]
    if v.type is not None:
        conds.append(REFERENCE.c.target_type == v.type)
    conds.append(REFERENCE.c.target_url.is_(None))
    return and_(*conds)


def reference_predicate(ctx: SqlContext, r: FromClause, rtype: str, c: Criterion,
                        sub: SubSearch) -> ColumnElement[bool]:
    code = c.param.code
    if c.modifier == "missing":
        return missing(r, REFERENCE, rtype, code, bool(c.values[0]))
    if c.modifier == "identifier":
        values = [v for v in c.values if isinstance(v, TokenValue)]
        return matches(r, hash_ids(TOKEN, token_values(rtype, f"{code}:identifier", values)))
    if c.chain:
        return matches(r, chain_ids(rtype, c, sub))
    refs = [v for v in c.values if isinstance(v, ReferenceValue)]
    return matches(r, index_ids(REFERENCE, rtype, code, or_(*(_value_condition(v) for v in refs))))


def chain_ids(rtype: str, c: Criterion, sub: SubSearch) -> Select[Any]:
    """``SELECT resource_id`` of the reference rows whose target matches the chained criteria."""
    conds = [and_(REFERENCE.c.target_type == target, REFERENCE.c.target_id.in_(sub(target, [inner])))
             for target, inner in zip(c.chain_types, c.chain, strict=True)]
    return index_ids(REFERENCE, rtype, c.param.code, REFERENCE.c.target_url.is_(None), or_(*conds))


def has_predicate(r: FromClause, rtype: str, c: HasCriterion, sub: SubSearch) -> ColumnElement[bool]:
    sources = sub(c.source_type, [c.inner])
    targets = select(REFERENCE.c.target_id).where(
        REFERENCE.c.resource_type == c.source_type, REFERENCE.c.param == c.ref_param,
        REFERENCE.c.target_type == rtype, REFERENCE.c.target_url.is_(None), REFERENCE.c.resource_id.in_(sources))
    return r.c.id.in_(targets)
