"""Full text in the database: SQLite FTS5 or PostgreSQL ``tsvector`` (see migration 0006).

Rows are written like the other index rows: by a BEFORE_COMMIT hook, deferred into the repository's bulk
inserts, so they commit (or roll back) with the resource. The query words were folded and cut exactly as the
documents were (``documents.py``), so they can be written into the FTS5 / tsquery expression directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, FromClause, column, func, literal, select, table

from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.search.fulltext.documents import content, narrative
from fhir_server.search.fulltext.syntax import Term, TextQuery
from fhir_server.search.fulltext.tables import SEARCH_TEXT

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

_TEXT = table("search_text", column("pk"), column("resource_type"), column("resource_id"),
              column("narrative_tsv"), column("content_tsv"))
_FTS = table("search_text_fts", column("rowid"), column("narrative"), column("content"))


def fts5_expression(queries: list[TextQuery]) -> str:
    def term(t: Term) -> str:
        return '"' + " ".join(t.words) + '"'  # a quoted string is a phrase; words hold no quotes

    return " OR ".join("(" + " AND ".join(term(t) for t in group) + ")" for q in queries for group in q.any_of)


def tsquery_expression(queries: list[TextQuery]) -> str:
    def term(t: Term) -> str:
        return "(" + " <-> ".join(t.words) + ")"  # words are letters and digits only: no tsquery operators

    return " | ".join("(" + " & ".join(term(t) for t in group) + ")" for q in queries for group in q.any_of)


class DatabaseFullText:
    def __init__(self, dialect: str) -> None:
        self.dialect = dialect  # "postgresql" or "sqlite": which word index migration 0006 made

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_COMMIT, self.on_write)

    def on_write(self, event: WriteEvent, repo: Repository | None) -> None:
        if repo is None or event.resource_id is None:
            return
        first = event.previous is None or (event.version is not None and event.version.version_id == 1)
        self._write(repo, event.resource_type, event.resource_id, event.resource, first=first)

    def reindex(self, repo: Repository, resource_type: str, items: list[tuple[str, dict[str, Any] | None]]) -> None:
        repo.execute(SEARCH_TEXT.delete().where(SEARCH_TEXT.c.resource_type == resource_type,
                                                SEARCH_TEXT.c.resource_id.in_([rid for rid, _ in items])))
        for rid, resource in items:
            if resource is not None:
                self._write(repo, resource_type, rid, resource, first=True)

    def _write(self, repo: Repository, rtype: str, rid: str, resource: dict[str, Any] | None, *,
               first: bool) -> None:
        if not first:  # at the next flush, before the new row
            repo.defer_delete(SEARCH_TEXT, rtype, rid)
        if resource is not None:
            repo.defer_insert(SEARCH_TEXT, {"resource_type": rtype, "resource_id": rid,
                                            "narrative": narrative(resource), "content": content(resource)})

    def predicate(self, r: FromClause, resource_type: str, field: str,
                  queries: list[TextQuery]) -> ColumnElement[bool]:
        t = _TEXT.alias()
        ids = select(t.c.resource_id).where(t.c.resource_type == resource_type)
        if self.dialect == "postgresql":
            ids = ids.where(t.c[f"{field}_tsv"].op("@@")(func.to_tsquery("simple", tsquery_expression(queries))))
        else:
            fts = _FTS.alias()
            ids = ids.where(t.c.pk.in_(select(fts.c.rowid).where(
                fts.c[field].op("MATCH")(literal(fts5_expression(queries))))))
        return r.c.id.in_(ids)
