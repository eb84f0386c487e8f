"""Number and quantity predicates: prefixes, implicit precision (``100`` is [99.5, 100.5)), units.

A quantity value ``5.4|http://unitsofmeasure.org|mg`` is converted to UCUM's canonical form (``search/ucum.py``)
and matched against the canonical rows indexed beside each UCUM quantity (``<param>:canonical``: value in SI
base units), so it finds a stored 5400 ug; a UCUM unit without a canonical form, or another system, needs
system and code to match; ``5.4||mg`` matches the code or the human unit; a bare number matches any unit.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, FromClause, and_, not_, or_

from fhir_server.search import ucum
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
    conds, canonical = [], []
    for v in c.values:
        assert isinstance(v, RangeValue)
        scaled = canonical_value(v)
        if scaled is not None:
            canonical.append(and_(number_condition(QUANTITY.c.value, scaled[0]), QUANTITY.c.code == scaled[1]))
            continue
        cond = [number_condition(QUANTITY.c.value, v)]
        if v.system is not None:
            cond.append(QUANTITY.c.system == v.system)
            if v.code is not None:
                cond.append(QUANTITY.c.code == v.code)
        elif v.code is not None:
            cond.append(or_(QUANTITY.c.code == v.code, QUANTITY.c.unit == v.code))
        conds.append(and_(*cond))
    found = []
    if conds:
        found.append(matches(r, index_ids(QUANTITY, rtype, code, or_(*conds))))
    if canonical:
        found.append(matches(r, index_ids(QUANTITY, rtype, f"{code}:canonical", or_(*canonical))))
    return or_(*found)


def canonical_value(v: RangeValue) -> tuple[RangeValue, str] | None:
    """The search value and its implicit range in UCUM base units, when its unit has a canonical form."""
    if v.system != ucum.SYSTEM or not v.code:
        return None
    found = ucum.factor(v.code)
    if found is None:
        return None
    mult, units = found

    def scale(x: datetime | Decimal) -> Decimal:
        assert isinstance(x, Decimal)
        return Decimal(repr(ucum.round12(float(x) * mult)))

    return RangeValue(v.prefix, scale(v.low), scale(v.high), scale(v.value), v.system, units), units
