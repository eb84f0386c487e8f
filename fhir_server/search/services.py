"""The search module of one server: its registry (core + runtime SearchParameters), the index writers
(search index, full text), the finder, and ``$reindex``. ``FhirServer`` builds one of these."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from fhir_server.hooks import Hooks
from fhir_server.rest.operations import Operation, OperationRegistry, reindex
from fhir_server.search.custom import RuntimeParameters
from fhir_server.search.finder import SearchFinder
from fhir_server.search.fulltext import make_fulltext
from fhir_server.search.index import SearchIndexer
from fhir_server.search.parser import SearchLimits
from fhir_server.search.registry import core_registry

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.storage.outbox import OutboxDispatcher


class SearchServices:
    def __init__(self, settings: Settings, engine: Engine, hooks: Hooks) -> None:
        base_url = settings.base_url or ""
        self.registry = core_registry().copy()  # this server's own: runtime parameters are per database
        self.runtime = RuntimeParameters(self.registry, engine)
        self.runtime.register(hooks)  # before the indexer: a SearchParameter is checked before anything
        self.indexer = SearchIndexer(self.registry, base_url)
        self.indexer.register(hooks)
        self.fulltext = make_fulltext(settings)
        self.fulltext.register(hooks)
        self.finder = SearchFinder(self.registry, base_url, SearchLimits(
            settings.search_max_and_params, settings.search_max_or_values, settings.search_max_sort_keys,
            settings.search_max_text_words, settings.search_timeout_seconds))
        self.finder.fulltext = self.fulltext
        self.reindex = reindex.Reindex(self.indexer, self.fulltext)  # its async runs: fhir_server/jobs

    def refresh(self, conn: Connection) -> None:
        """Pick up SearchParameters other processes stored (a cheap check, at most once a second)."""
        self.runtime.refresh(conn)

    def register_operations(self, operations: OperationRegistry) -> None:
        operations.register(Operation("reindex", self.reindex, reindex.DEFINITION,
                                      system=True, affects_state=True, admin=True))

    def install(self, dispatcher: OutboxDispatcher) -> None:
        """Outbox handlers of the index writers that deliver elsewhere (Elasticsearch)."""
        handlers = getattr(self.fulltext, "outbox_handlers", None)
        for topic, handler in (handlers() if handlers else {}).items():
            dispatcher.register(topic, handler)
