"""Date predicates over [low, high] ranges with the prefixes of search.html#prefix.

Index rows and search values are both ranges (a value's precision gives its range): eq = the row's range
lies within the value's; gt/lt = the row extends after/before it; ge/le = it reaches the value or beyond;
sa/eb = it starts after / ends before; ap = it overlaps the value widened by 10% of its distance from now.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, FromClause, and_, not_, or_

from fhir_server.errors import INVALID, FhirError
from fhir_server.search.parser import Criterion, RangeValue
from fhir_server.search.sql.common import index_ids, matches, missing
from fhir_server.search.tables import DATE


def range_condition(low: Any, high: Any, v: RangeValue) -> ColumnElement[bool]:
    ps, pe = v.low, v.high
    p = v.prefix
    if p == "eq":
        return and_(low >= ps, high <= pe)
    if p == "ne":
        return not_(and_(low >= ps, high <= pe))
    if p == "gt":
        return high > pe
    if p == "lt":
        return low < ps
    if p == "ge":
        return high >= ps
    if p == "le":
        return low <= pe
    if p == "sa":
        return low > pe
    if p == "eb":
        return high < ps
    if p == "ap":
        assert isinstance(ps, datetime) and isinstance(pe, datetime)
        margin = abs(datetime.now(UTC) - ps) / 10
        return and_(low <= pe + margin, high >= ps - margin)
    raise FhirError(400, INVALID, f"Unknown prefix {p}")


def date_predicate(r: FromClause, rtype: str, c: Criterion) -> ColumnElement[bool]:
    code = c.param.code
    if c.modifier == "missing":
        return missing(r, DATE, rtype, code, bool(c.values[0]))
    values = [v for v in c.values if isinstance(v, RangeValue)]
    if code == "_lastUpdated":  # the resource table's own column: an instant, so low == high
        return or_(*(range_condition(r.c.last_updated, r.c.last_updated, v) for v in values))
    return matches(r, index_ids(DATE, rtype, code, or_(*(range_condition(DATE.c.low, DATE.c.high, v)
                                                         for v in values))))
