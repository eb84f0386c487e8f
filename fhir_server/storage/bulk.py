"""Rows queued per table and written in bulk at the next flush of the unit of work.

On PostgreSQL a flush is one ``COPY ... FROM STDIN`` per table inside the transaction (a 500-entry Bundle
with its search index is a handful of statements instead of tens of thousands); elsewhere an executemany
of a precompiled INSERT. The ingest hot path: nothing here goes through SQLAlchemy's statement compiler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import JSON, Connection, Table
from sqlalchemy.exc import DBAPIError


def _orjson_text(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class _Plan:
    columns: tuple[str, ...]
    sql: str
    processors: tuple[Callable[[Any], Any] | None, ...]


@dataclass
class BulkRows:
    rows: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, table: Table, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def flush(self, conn: Connection) -> None:
        pending, self.rows = self.rows, {}
        for table, rows in pending.items():
            if conn.dialect.name == "postgresql":
                _copy(conn, table, rows)
            else:
                plan = _plan(conn, table)
                params = [tuple(row.get(c) if p is None else p(row.get(c))
                                for c, p in zip(plan.columns, plan.processors, strict=True)) for row in rows]
                conn.exec_driver_sql(plan.sql, params)


_PLANS: dict[tuple[str, str], _Plan] = {}


def _columns(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if not (c.primary_key and c.autoincrement is True))


def _plan(conn: Connection, table: Table) -> _Plan:
    dialect = conn.dialect
    key = (dialect.name, table.name)
    plan = _PLANS.get(key)
    if plan is None:
        columns = tuple(c for c in _columns(table) if c != "pk")
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(mark for _ in columns)})"
        # The dialect's own bind processors: e.g. SQLite's DATETIME text must be exactly what queries bind.
        processors = tuple(table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns)
        plan = _PLANS[key] = _Plan(columns, sql, processors)
    return plan


def _copy(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    columns = tuple(c for c in _columns(table) if c != "pk")
    json_columns = {c for c in columns if isinstance(table.c[c].type.dialect_impl(conn.dialect), JSON)}
    raw = conn.connection.driver_connection
    assert raw is not None
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row([Jsonb(row[c], dumps=_orjson_text) if c in json_columns and row.get(c) is not None
                                else row.get(c) for c in columns])
    except psycopg.Error as exc:
        # As SQLAlchemy would wrap it, so the unit of work sees (and retries) unique violations and the like.
        raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc
