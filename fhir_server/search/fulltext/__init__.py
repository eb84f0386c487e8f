"""Full-text search (``_text``: the narrative, ``_content``: the whole resource) behind one small interface.

The database backend (``database.py``: SQLite FTS5, PostgreSQL tsvector + GIN) is the default; with
``FHIR_ELASTICSEARCH_URL`` set, ``elasticsearch.py`` indexes through the outbox and answers queries with ids
that then go through the normal SQL path. Either way a criterion becomes one SQL predicate on the resource.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import ColumnElement, FromClause

from fhir_server.search.fulltext.syntax import TextQuery

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.hooks import Hooks
    from fhir_server.storage.repository import Repository

# The full-text parameters and the document field each searches.
FIELDS = {"_text": "narrative", "_content": "content"}


class FullTextIndex(Protocol):
    def register(self, hooks: Hooks) -> None:
        """Attach to the write path, so every version written is (or will be) indexed."""

    def reindex(self, repo: Repository, resource_type: str, items: list[tuple[str, dict[str, Any] | None]]) -> None:
        """Replace the full-text entries of a batch of (id, current content or None if deleted) ($reindex)."""

    def predicate(self, r: FromClause, resource_type: str, field: str,
                  queries: list[TextQuery]) -> ColumnElement[bool]:
        """Resources of ``r`` whose ``field`` matches any of ``queries``."""


def make_fulltext(settings: Settings) -> FullTextIndex:
    if getattr(settings, "elasticsearch_url", None):
        from fhir_server.search.fulltext.elasticsearch import ElasticsearchIndex

        return ElasticsearchIndex(settings)
    from fhir_server.search.fulltext.database import DatabaseFullText

    return DatabaseFullText("postgresql" if settings.database_url.startswith("postgresql") else "sqlite")
