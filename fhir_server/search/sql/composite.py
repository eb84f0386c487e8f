"""Composite predicates (search.html#composite): every component must hold on the same element.

``component-code-value-quantity=http://loinc.org|8480-6$gt100`` is: some ``search_composite`` row of part 0
with that code and, on the same (resource, parameter, element), a row of part 1 above 100. One alias of the
table per component, joined on the element; values are ORed, each value's components ANDed.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, Select, and_, false, or_, select

from fhir_server.search.composite_table import COMPOSITE
from fhir_server.search.parser import CompositeValue, Criterion, RangeValue, ReferenceValue, TokenValue
from fhir_server.search.sql.common import like_prefix, matches
from fhir_server.search.sql.date import range_condition
from fhir_server.search.sql.number import canonical_value, number_condition
from fhir_server.search.sql.token import token_values
from fhir_server.search.values import hash64, normalize


def _part_condition(t: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    """One component's single value on one alias of the composite table."""
    sp, v = c.param, c.values[0]
    kind = sp.type
    if kind == "token" and isinstance(v, TokenValue):
        return and_(t.c.sub == sp.code, token_values(rtype, sp.code, [v], t))
    if kind == "quantity" and isinstance(v, RangeValue):
        scaled = canonical_value(v)
        if scaled is not None:
            return and_(t.c.sub == f"{sp.code}:canonical", t.c.code == scaled[1],
                        number_condition(t.c.value, scaled[0]))
        conds = [t.c.sub == sp.code, number_condition(t.c.value, v)]
        if v.system is not None:
            conds.append(t.c.system == v.system)
            if v.code is not None:
                conds.append(t.c.code == v.code)
        elif v.code is not None:
            conds.append(or_(t.c.code == v.code, t.c.unit == v.code))
        return and_(*conds)
    if kind == "number" and isinstance(v, RangeValue):
        return and_(t.c.sub == sp.code, number_condition(t.c.value, v))
    if kind == "date" and isinstance(v, RangeValue):
        return and_(t.c.sub == sp.code, range_condition(t.c.low, t.c.high, v))
    if kind == "string":
        return and_(t.c.sub == sp.code, t.c.value_norm.like(like_prefix(normalize(str(v))) + "%", escape="\\"))
    if kind == "uri":
        return t.c.hash_value == hash64(rtype, sp.code, str(v))
    if kind == "reference" and isinstance(v, ReferenceValue):
        if v.url is not None:
            return and_(t.c.sub == sp.code, t.c.target_url == v.url)
        conds = [t.c.sub == sp.code, t.c.target_id == v.id, t.c.target_url.is_(None)]
        if v.type is not None:
            conds.append(t.c.target_type == v.type)
        return and_(*conds)
    return false()


def _value_ids(rtype: str, code: str, value: CompositeValue) -> Select[tuple[str]]:
    aliases = [COMPOSITE.alias(f"cmp{i}") for i in range(len(value.parts))]
    first = aliases[0]
    conds: list[ColumnElement[bool]] = [first.c.resource_type == rtype, first.c.param == code]
    for i, (t, part) in enumerate(zip(aliases, value.parts, strict=True)):
        conds += [t.c.part == i, _part_condition(t, rtype, part)]
        if i:
            conds += [t.c.resource_id == first.c.resource_id, t.c.resource_type == rtype, t.c.param == code,
                      t.c.elem == first.c.elem]
    return select(first.c.resource_id).where(*conds)


def composite_predicate(r: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    values = [v for v in c.values if isinstance(v, CompositeValue)]
    if not values:
        return false()
    return or_(*(matches(r, _value_ids(rtype, c.param.code, v)) for v in values))

