"""Rows queued per table and written in bulk at the next flush of the unit of work.

A flush is ONE statement on PostgreSQL, whatever the number of tables: the rows of each table go as one JSON array
(``INSERT ... SELECT ... FROM jsonb_to_recordset(...)``), each table's insert a data-modifying WITH
clause. (It was one ``COPY`` per table, two round trips each: with a flush before every rule's query, the
seed-demo spent most of its time on them.) Elsewhere an executemany of a precompiled INSERT per table.

Queued deletions (``delete_rows``: a resource's old search index rows, when a new version replaces them) run in
the same flush, before the inserts: on PostgreSQL they are WITH clauses of the same statement too, which see
the rows as they were before it, so they never remove the rows it inserts. A queued row of the same resource
is dropped instead. Nothing here goes through SQLAlchemy's statement compiler: the ingest hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import JSON, Connection, Float, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError


def _orjson_text(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class _Plan:
    columns: tuple[str, ...]
    sql: str
    processors: tuple[Callable[[Any], Any] | None, ...]


@dataclass(frozen=True)
class _PgTable:
    columns: tuple[str, ...]
    json: tuple[bool, ...]
    floats: tuple[str, ...]  # float columns: JSON has no inf/NaN (orjson writes null), PostgreSQL's text does
    insert: str  # INSERT ... SELECT ... FROM jsonb_to_recordset(%s) AS r(column type, ...)
    delete: str  # DELETE ... WHERE resource_type = %s AND resource_id = ANY(%s)
    update: str  # UPDATE ... FROM jsonb_to_recordset(%s) ... WHERE resource_type = %s AND id = ANY(%s)


@dataclass
class BulkRows:
    rows: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    # (resource_type, resource_id) whose rows in the table go at the next flush, before its inserts
    deletes: dict[Table, set[tuple[str, str]]] = field(default_factory=dict)
    # PostgreSQL only: new values of rows keyed (resource_type, id) that this transaction holds locked
    updates: dict[Table, dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)

    def add(self, table: Table, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)

    def delete_rows(self, table: Table, resource_type: str, resource_id: str) -> None:
        """Queue the deletion of one resource's rows in ``table`` (columns resource_type, resource_id): those
        written before, and those queued here and not written yet."""
        queued = self.rows.get(table)
        if queued:
            kept = [r for r in queued if r["resource_id"] != resource_id or r["resource_type"] != resource_type]
            if len(kept) != len(queued):
                self.rows[table] = kept
        self.deletes.setdefault(table, set()).add((resource_type, resource_id))

    def update(self, table: Table, row: dict[str, Any]) -> None:
        """Queue new values for the row keyed by ``row``'s (resource_type, id), which the caller holds locked
        (a resource's current row): a queued insert of that row takes them instead (one WITH clause would
        not see another's new row), a queued update gives way to them."""
        rtype, rid = row["resource_type"], row["id"]
        for queued in reversed(self.rows.get(table, ())):
            if queued["id"] == rid and queued["resource_type"] == rtype:
                queued.update(row)
                return
        self.updates.setdefault(table, {})[(rtype, rid)] = row

    def __bool__(self) -> bool:
        return bool(self.rows) or bool(self.deletes) or bool(self.updates)

    def flush(self, conn: Connection) -> None:
        pending, self.rows = {t: rows for t, rows in self.rows.items() if rows}, {}
        deletes, self.deletes = self.deletes, {}
        updates, self.updates = self.updates, {}
        if conn.dialect.name == "postgresql":
            _flush_postgresql(conn, pending, deletes, updates)
            return
        assert not updates, "updates are queued on PostgreSQL only"
        for table, keys in deletes.items():
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(f"DELETE FROM {table.name} WHERE resource_type = {mark} AND resource_id = {mark}",
                                 sorted(keys))
        for table, rows in pending.items():
            plan = _plan(conn, table)
            params = [tuple(row.get(c) if p is None else p(row.get(c))
                            for c, p in zip(plan.columns, plan.processors, strict=True)) for row in rows]
            conn.exec_driver_sql(plan.sql, params)


# Above this many rows a flush is COPYed table by table (a big Bundle or $import), below it one statement.
COPY_ABOVE = 2000
_PLANS: dict[tuple[str, str], _Plan] = {}
_PG: dict[str, _PgTable] = {}
_KEY = ("resource_type", "id")


def _columns(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if not (c.primary_key and c.autoincrement is True) and c.name != "pk")


def _plan(conn: Connection, table: Table) -> _Plan:
    dialect = conn.dialect
    key = (dialect.name, table.name)
    plan = _PLANS.get(key)
    if plan is None:
        columns = _columns(table)
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(mark for _ in columns)})"
        # The dialect's own bind processors: e.g. SQLite's DATETIME text must be exactly what queries bind.
        processors = tuple(table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns)
        plan = _PLANS[key] = _Plan(columns, sql, processors)
    return plan


def _pg_table(dialect: Dialect, table: Table) -> _PgTable:
    plan = _PG.get(table.name)
    if plan is None:
        columns = _columns(table)
        types = [table.c[c].type.dialect_impl(dialect) for c in columns]
        record = ", ".join(f'"{c}" {t.compile(dialect=dialect)}' for c, t in zip(columns, types, strict=True))
        names = ", ".join(f'"{c}"' for c in columns)
        plan = _PG[table.name] = _PgTable(
            columns, tuple(isinstance(t, JSON) for t in types),
            tuple(c for c, t in zip(columns, types, strict=True) if isinstance(t, Float)),
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM jsonb_to_recordset(%s::jsonb) AS r({record})",
            # one type and its ids: the (resource_type, resource_id) index serves it on a table of any size
            f"DELETE FROM {table.name} WHERE resource_type = %s AND resource_id = ANY(%s::varchar[])",
            # the ANY: an index scan of the table's key whatever the planner guesses of the recordset
            f"UPDATE {table.name} AS t SET {', '.join(f'{c} = r.{c}' for c in columns if c not in _KEY)} "
            f"FROM jsonb_to_recordset(%s::jsonb) AS r({record}) "
            f"WHERE t.resource_type = %s AND t.id = ANY(%s::varchar[]) AND t.id = r.id")
    return plan


def _flush_postgresql(conn: Connection, pending: dict[Table, list[dict[str, Any]]],
                      deletes: dict[Table, set[tuple[str, str]]],
                      updates: dict[Table, dict[tuple[str, str], dict[str, Any]]]) -> None:
    """Every queued deletion and insert in one statement: one round trip per flush (a big one: COPY).
    Each table's rows travel as one JSON array (orjson writes it in C; psycopg's array parameters cost far
    more Python), which ``jsonb_to_recordset`` turns back into typed rows."""
    copies: dict[Table, list[dict[str, Any]]] = {}
    if sum(len(rows) for rows in pending.values()) > COPY_ABOVE:
        copies, pending = pending, {}  # a big $import Bundle: COPY's cost per row is lower
    clauses: list[str] = []
    params: list[Any] = []
    for table, keys in deletes.items():
        by_type: dict[str, list[str]] = {}
        for rtype, rid in sorted(keys):
            by_type.setdefault(rtype, []).append(rid)
        for rtype, ids in by_type.items():
            clauses.append(_pg_table(conn.dialect, table).delete)
            params += [rtype, ids]
    for table, rows in pending.items():
        plan = _pg_table(conn.dialect, table)
        clauses.append(plan.insert)
        params.append(_json_rows(rows, plan.floats))
    for table, changed in updates.items():
        grouped: dict[str, list[dict[str, Any]]] = {}
        for (rtype, _rid), row in sorted(changed.items()):
            grouped.setdefault(rtype, []).append(row)
        for rtype, rows in grouped.items():
            clauses.append(_pg_table(conn.dialect, table).update)
            params += [_json_rows(rows, _pg_table(conn.dialect, table).floats), rtype, [row["id"] for row in rows]]
    if clauses:
        # data-modifying WITH clauses all run, and see the tables as they were before the statement
        sql = clauses[0] if len(clauses) == 1 else \
            "WITH " + ", ".join(f"w{n} AS ({c})" for n, c in enumerate(clauses)) + " SELECT 1"
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            with raw.cursor() as cursor:
                cursor.execute(sql, params)
        except psycopg.Error as exc:
            # As SQLAlchemy would wrap it, so the unit of work sees (and retries) unique violations and the like.
            raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc
    for table, rows in copies.items():
        _copy(conn, table, rows)


def _json_rows(rows: list[dict[str, Any]], floats: tuple[str, ...]) -> str:
    """The rows as one JSON array; a float column's inf or NaN (a huge quantity in canonical units, say) as
    PostgreSQL's text for it, which jsonb_to_recordset reads back as that float."""
    for column in floats:
        for row in rows:
            value = row.get(column)
            if isinstance(value, float) and not math.isfinite(value):
                row[column] = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return orjson.dumps(rows).decode()


def _copy(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    plan = _pg_table(conn.dialect, table)
    raw = conn.connection.driver_connection
    assert raw is not None
    sql = f"COPY {table.name} ({', '.join(plan.columns)}) FROM STDIN"
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row([Jsonb(row[c], dumps=_orjson_text) if j and row.get(c) is not None else row.get(c)
                                for c, j in zip(plan.columns, plan.json, strict=True)])
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc
