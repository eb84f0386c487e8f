"""Number and quantity predicates: prefixes, implicit precision (``100`` is [99.5, 100.5)), units.

A quantity value ``5.4|http://unitsofmeasure.org|mg`` needs system and code to match; ``5.4||mg`` matches
the code or the human unit; a bare number matches any unit. No UCUM conversion yet (mg vs g).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, FromClause, and_, not_, or_

from fhir_server.search.parser import Criterion, RangeValue
from fhir_server.search.sql.common import index_ids, matches, missing
from fhir_server.search.tables import NUMBER, QUANTITY


def number_condition(col: Any, v: RangeValue) -> ColumnElement[bool]:
    assert isinstance(v.value, Decimal) and isinstance(v.low, Decimal) and isinstance(v.high, Decimal)
    value, low, high = float(v.value), float(v.low), float(v.high)
    p = v.prefix
    if p == "eq":
        return and_(col >= low, col < high)
    if p == "ne":
        return not_(and_(col >= low, col < high))
    if p in ("gt", "sa"):
        return col > value
    if p in ("lt", "eb"):
        return col < value
    if p == "ge":
        return col >= value
    if p == "le":
        return col <= value
    margin = abs(value) / 10  # ap: within 10%
    return and_(col >= value - margin, col <= value + margin)


def number_predicate(r: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    code = c.param.code
    if c.modifier == "missing":
        return missing(r, NUMBER, rtype, code, bool(c.values[0]))
    values = [v for v in c.values if isinstance(v, RangeValue)]
    return matches(r, index_ids(NUMBER, rtype, code, or_(*(number_condition(NUMBER.c.value, v) for v in values))))


def quantity_predicate(r: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    code = c.param.code
    if c.modifier == "missing":
        return missing(r, QUANTITY, rtype, code, bool(c.values[0]))
    conds = []
    for v in c.values:
        assert isinstance(v, RangeValue)
        cond = [number_condition(QUANTITY.c.value, v)]
        if v.system is not None:
            cond.append(QUANTITY.c.system == v.system)
            if v.code is not None:
                cond.append(QUANTITY.c.code == v.code)
        elif v.code is not None:
            cond.append(or_(QUANTITY.c.code == v.code, QUANTITY.c.unit == v.code))
        conds.append(and_(*cond))
    return matches(r, index_ids(QUANTITY, rtype, code, or_(*conds)))
