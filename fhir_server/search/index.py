"""The BEFORE_COMMIT hook that keeps the search index in step with every write, in the same transaction.

For each version written: delete the resource's old rows (not needed for a first version), then insert the
new rows with one executemany per index table. A deletion only removes rows, so deleted resources never
match a search. This is the ingest hot path: the INSERTs are precompiled per dialect and go straight to the
driver (SQLAlchemy's per-statement overhead was larger than the extraction itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete

from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.search.extract import Extractor, IndexRows
from fhir_server.search.registry import Registry
from fhir_server.search.tables import TABLES

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository


class SearchIndexer:
    def __init__(self, registry: Registry, base_url: str = "") -> None:
        self.extractor = Extractor(registry, base_url)
        self._inserts: dict[tuple[str, str], tuple[str, list[str], list[Callable[[Any], Any] | None]]] = {}

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_COMMIT, self.on_write)

    def on_write(self, event: WriteEvent, repo: Repository | None) -> None:
        if repo is None or event.resource_id is None:
            return
        first = event.previous is None or (event.version is not None and event.version.version_id == 1)
        self.write(repo.conn, event.resource_type, event.resource_id, event.resource, first_version=first)

    def write(self, conn: Connection, resource_type: str, resource_id: str, resource: dict[str, object] | None,
              *, first_version: bool = False) -> IndexRows:
        """Replace the index rows of one resource (``resource`` None: a deletion)."""
        if not first_version:
            for table in TABLES.values():
                conn.execute(delete(table).where(table.c.resource_type == resource_type,
                                                 table.c.resource_id == resource_id))
        rows = IndexRows()
        if resource is not None:
            rows = self.extractor.extract(resource_type, resource_id, resource)
            for kind, batch in rows.rows.items():
                sql, columns, processors = self._insert(conn, kind)
                params = [tuple(row[c] if p is None else p(row[c]) for c, p in zip(columns, processors, strict=True))
                          for row in batch]
                conn.exec_driver_sql(sql, params)
        return rows

    def _insert(self, conn: Connection, kind: str) -> tuple[str, list[str], list[Callable[[Any], Any] | None]]:
        dialect = conn.dialect
        key = (dialect.name, kind)
        cached = self._inserts.get(key)
        if cached is None:
            table = TABLES[kind]
            columns = [c.name for c in table.columns if c.name != "pk"]
            mark = "?" if dialect.paramstyle == "qmark" else "%s"
            sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
                   f"VALUES ({', '.join(mark for _ in columns)})")
            # dialect_impl: the SQLite DATETIME text format must be exactly what SQLAlchemy binds in queries
            processors: list[Callable[[Any], Any] | None] = [
                table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
            cached = self._inserts[key] = (sql, columns, processors)
        return cached
