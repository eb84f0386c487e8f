"""The BEFORE_COMMIT hook that keeps the search index in step with every write, in the same transaction.

For each version written: queue the deletion of the resource's old rows (not for a first version;
``Repository.defer_delete``), extract the new rows and hand them to the repository's deferred inserts
(``Repository.defer_insert``): both are written in bulk (one statement per flush on PostgreSQL, an
executemany per table elsewhere: ``storage/bulk.py``) before the next statement of the transaction or at
the commit, so a transaction Bundle of 500 resources costs a handful of statements, and a search in the
same transaction still sees them. A rollback drops them with everything else. A deletion only removes rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect

from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.search.extract import Extractor, IndexRows
from fhir_server.search.registry import Registry
from fhir_server.search.tables import TABLES

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

Insert = tuple[str, list[str], list[Callable[[Any], Any] | None]]
_INSERTS: dict[tuple[str, str], Insert] = {}


def _insert(dialect: Dialect, kind: str) -> Insert:
    key = (dialect.name, kind)
    cached = _INSERTS.get(key)
    if cached is None:
        table = TABLES[kind]
        columns = [c.name for c in table.columns if c.name != "pk"]
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join(mark for _ in columns)})"
        # dialect_impl: the SQLite DATETIME text format must be exactly what SQLAlchemy binds in queries
        processors: list[Callable[[Any], Any] | None] = [
            table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
        cached = _INSERTS[key] = (sql, columns, processors)
    return cached


class SearchIndexer:
    def __init__(self, registry: Registry, base_url: str = "") -> None:
        self.extractor = Extractor(registry, base_url)
        self._kinds: dict[str, list[str]] = {}
        self._kinds_version = registry.version

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_COMMIT, self.on_write)

    def on_write(self, event: WriteEvent, repo: Repository | None) -> None:
        if repo is None or event.resource_id is None:
            return
        rtype, rid = event.resource_type, event.resource_id
        first = event.previous is None or (event.version is not None and event.version.version_id == 1)
        if not first:  # at the next flush, before the new rows (queued ones of an earlier version dropped)
            for kind in self.kinds(rtype):
                repo.defer_delete(TABLES[kind], rtype, rid)
        if event.resource is not None:
            rows = self.extractor.extract(rtype, rid, event.resource)
            for kind, batch in rows.rows.items():
                table = TABLES[kind]
                for row in batch:
                    repo.defer_insert(table, row)

    def kinds(self, resource_type: str) -> list[str]:
        """The index tables a resource of this type can have rows in."""
        if self._kinds_version != self.extractor.registry.version:
            self._kinds, self._kinds_version = {}, self.extractor.registry.version
        kinds = self._kinds.get(resource_type)
        if kinds is None:
            found = {sp.type for sp, _ in self.extractor.plan(resource_type)}
            if "reference" in found:
                found.add("token")  # <param>:identifier rows
            if self.extractor.composites.plan(resource_type):
                found.add("composite")  # per-element composite rows (composite.py)
            kinds = self._kinds[resource_type] = sorted(found)
        return kinds

    def _delete(self, conn: Connection, resource_type: str, resource_id: str) -> None:
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        for kind in self.kinds(resource_type):
            conn.exec_driver_sql(f"DELETE FROM {TABLES[kind].name} WHERE resource_type = {mark} "
                                 f"AND resource_id = {mark}", (resource_type, resource_id))

    def reindex(self, repo: Repository, resource_type: str, items: list[tuple[str, dict[str, Any] | None]]) -> int:
        """$reindex: replace the index rows of a batch of resources (None: deleted, rows only removed) with
        what the registry extracts now; in every table, as an older registry may have written any kind.
        Returns the number of rows queued."""
        ids = [rid for rid, _ in items]
        repo.flush()
        for table in TABLES.values():
            repo.execute(table.delete().where(table.c.resource_type == resource_type, table.c.resource_id.in_(ids)))
        queued = 0
        for rid, resource in items:
            if resource is None:
                continue
            rows = self.extractor.extract(resource_type, rid, resource)
            for kind, batch in rows.rows.items():
                for row in batch:
                    repo.defer_insert(TABLES[kind], row)
            queued += rows.count()
        return queued

    def write(self, conn: Connection, resource_type: str, resource_id: str, resource: dict[str, Any] | None,
              *, first_version: bool = False) -> IndexRows:
        """Replace the index rows of one resource right away (``resource`` None: a deletion); for tools
        working on a bare connection (reindex, benchmarks). Writes through the repository use the hook."""
        if not first_version:
            self._delete(conn, resource_type, resource_id)
        rows = IndexRows()
        if resource is not None:
            rows = self.extractor.extract(resource_type, resource_id, resource)
            for kind, batch in rows.rows.items():
                sql, columns, processors = _insert(conn.dialect, kind)
                conn.exec_driver_sql(sql, [tuple(row[c] if p is None else p(row[c])
                                                 for c, p in zip(columns, processors, strict=True))
                                           for row in batch])
        return rows
