"""``_sort`` keys as SQL and keyset (cursor) conditions that page correctly while data is written.

Each key is a correlated subquery over the parameter's index rows (min for ascending, max for
descending; dates sort by the start of their range ascending and its end descending). A token whose codes
have a meaningful order (a request's priority: stat before routine) sorts by its rank in an order the
server was given as data (``Registry.sort_orders``) instead of alphabetically. Resources without
a value sort last either way. Paging continues after the last row's (keys..., id), never by OFFSET.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, FromClause, and_, case, false, func, or_, select

from fhir_server.search.registry import SearchParam
from fhir_server.search.tables import TABLES


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool
    order: tuple[str, ...] = ()  # token codes in their sort order (ranked 0, 1, ...); unlisted codes after them


_SORT_COLUMN = {"string": "value_norm", "token": "code", "number": "value", "quantity": "value",
                "reference": "target_id", "uri": "value"}


def sort_expression(r: FromClause, rtype: str, key: SortKey) -> ColumnElement[Any]:
    code = key.param.code
    if code == "_id":
        return r.c.id
    if code == "_lastUpdated":
        return r.c.last_updated
    table = TABLES[key.param.type]
    column: ColumnElement[Any]
    if key.param.type == "date":
        column = table.c.high if key.descending else table.c.low
    elif key.order and key.param.type == "token":
        column = case({c: i for i, c in enumerate(key.order)}, value=table.c.code, else_=len(key.order))
    else:
        column = table.c[_SORT_COLUMN[key.param.type]]
    agg = func.max(column) if key.descending else func.min(column)
    params = table.c.param.in_(key.param.union_of) if key.param.union_of else table.c.param == code
    return select(agg).where(table.c.resource_type == rtype, table.c.resource_id == r.c.id,
                             params).scalar_subquery()


def order_by(columns: Sequence[ColumnElement[Any]], keys: list[SortKey], id_col: ColumnElement[Any]) -> list[Any]:
    out: list[Any] = []
    for col, key in zip(columns, keys, strict=True):
        out += [col.is_(None), col.desc() if key.descending else col.asc()]
    return [*out, id_col.asc()]


def after_cursor(columns: Sequence[ColumnElement[Any]], keys: list[SortKey], id_col: ColumnElement[Any],
                 values: list[Any], last_id: str) -> ColumnElement[bool]:
    """Rows strictly after (values..., last_id) in the order of ``order_by`` (NULLs last)."""
    clauses = []
    for i in range(len(keys) + 1):
        eqs = [col.is_(None) if v is None else col == v for col, v in zip(columns[:i], values[:i], strict=True)]
        if i == len(keys):
            last: ColumnElement[bool] = id_col > last_id
        elif values[i] is None:
            last = false()
        else:
            col = columns[i]
            last = or_(col.is_(None), col < values[i] if keys[i].descending else col > values[i])
        clauses.append(and_(*eqs, last))
    return or_(*clauses)
