"""``$reindex`` (type level ``POST [base]/Patient/$reindex``, system level ``POST [base]/$reindex``).

Rebuilds the search index rows and the full-text entries of every stored resource from the registry as
it is now: after a SearchParameter was added or changed, and for resources written before the index
existed (migration 0002) or before full text (0006). Synchronous, in one transaction, but in keyset
batches of ``_count`` (default 500) resources whose rows are written before the next batch is read, so
memory stays bounded whatever the size. (A background job per type is for the jobs module.)
Answers Parameters: ``count`` (resources reindexed), ``rows`` (index rows written), one ``type`` part each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fhir_server.definitions import resource_types
from fhir_server.errors import FORBIDDEN, INVALID, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.models import RESOURCE

if TYPE_CHECKING:
    from fhir_server.search.fulltext import FullTextIndex
    from fhir_server.search.index import SearchIndexer
    from fhir_server.storage.repository import Repository

DEFINITION = "urn:fhir-server:OperationDefinition/reindex"
BATCH = 500
MAX_BATCH = 5000


class Reindex:
    def __init__(self, indexer: SearchIndexer, fulltext: FullTextIndex) -> None:
        self.indexer = indexer
        self.fulltext = fulltext

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        if req.method != "POST":
            raise FhirError(405, INVALID, "$reindex changes the index: use POST")
        access = repo.access
        if access is not None and getattr(access, "role", None) not in (None, "admin"):
            raise FhirError(403, FORBIDDEN, "$reindex is for administrators and backend services")
        batch = _batch_size(req.param("_count"))
        types = [resource_type] if resource_type else sorted(resource_types())
        parts: list[dict[str, Any]] = []
        total = rows = 0
        for rtype in types:
            count, written = self._type(repo, rtype, batch)
            if count:
                parts.append({"name": "type", "part": [{"name": "type", "valueCode": rtype},
                                                       {"name": "count", "valueInteger": count}]})
            total += count
            rows += written
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": [
            {"name": "count", "valueInteger": total}, {"name": "rows", "valueInteger": rows}, *parts]})

    def _type(self, repo: Repository, rtype: str, batch: int) -> tuple[int, int]:
        r = RESOURCE
        after = ""
        count = written = 0
        while True:
            page = repo.execute(select(r.c.id, r.c.deleted, r.c.content).where(
                r.c.resource_type == rtype, r.c.id > after).order_by(r.c.id).limit(batch)).all()
            if not page:
                return count, written
            items = [(row.id, None if row.deleted else row.content) for row in page]
            written += self.indexer.reindex(repo, rtype, items)
            self.fulltext.reindex(repo, rtype, items)
            repo.flush()  # this batch's rows go to the database before the next batch is read
            count += sum(1 for _, content in items if content is not None)
            after = page[-1].id


def _batch_size(text: str | None) -> int:
    if text is None:
        return BATCH
    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH:
        raise FhirError(400, INVALID, f"_count (batch size) must be 1 to {MAX_BATCH}", ("_count",))
    return int(text)
