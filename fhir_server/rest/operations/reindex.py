"""``$reindex`` (type level ``POST [base]/Patient/$reindex``, system level ``POST [base]/$reindex``).

Rebuilds the search index rows and the full-text entries of every stored resource from the registry as
it is now: after a SearchParameter was added or changed, and for resources written before the index
existed (migration 0002) or before full text (0006). Work goes in keyset batches of ``_count`` (default
500) resources whose rows are written before the next batch is read, so memory stays bounded.

Without ``Prefer: respond-async`` it runs in the request, in one transaction, and answers Parameters:
``count`` (resources reindexed), ``rows`` (index rows written), one ``type`` part each. With it (what a
store of millions needs: HAPI runs reindexing as a job too) the request only records a job and answers
202 with a status URL; a job runner (fhir_server/jobs/reindex_job.py) does the batches, each in its own
transaction with a checkpoint, so a killed worker's job resumes after the last batch it committed, and the
status URL answers the same Parameters once it is done.
"""

from __future__ import annotations

from collections.abc import Callable
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


# (request, unit of work, job kind, job params) -> the 202 answer: set by the jobs module (bulk_ops)
StartJob = Callable[["FhirRequest", "Repository", str, dict[str, Any]], FhirResponse]


class Reindex:
    def __init__(self, indexer: SearchIndexer, fulltext: FullTextIndex) -> None:
        self.indexer = indexer
        self.fulltext = fulltext
        self.start_job: StartJob | None = None

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        if req.method != "POST":
            raise FhirError(405, INVALID, "$reindex changes the index: use POST")
        if getattr(repo.access, "role", None) not in (None, "admin"):
            raise FhirError(403, FORBIDDEN, "$reindex is for administrators and backend services")
        batch = _batch_size(req.param("_count"))
        types = [resource_type] if resource_type else sorted(resource_types())
        if req.prefer("respond-async") is not None and self.start_job is not None:
            return self.start_job(req, repo, "reindex", {"types": types, "batch": batch})
        counts: dict[str, int] = {}
        rows = 0
        for rtype in types:
            after: str | None = ""
            while after is not None:
                count, written, after = self.batch(repo, rtype, after, batch)
                counts[rtype] = counts.get(rtype, 0) + count
                rows += written
        return FhirResponse(200, result(counts, rows))

    def batch(self, repo: Repository, rtype: str, after: str, size: int) -> tuple[int, int, str | None]:
        """Reindex up to ``size`` resources of ``rtype`` with ids after ``after``: (resources reindexed,
        index rows written, the last id seen or None when the type is done)."""
        r = RESOURCE
        page = repo.execute(select(r.c.id, r.c.deleted, r.c.content).where(
            r.c.resource_type == rtype, r.c.id > after).order_by(r.c.id).limit(size)).all()
        if not page:
            return 0, 0, None
        items = [(row.id, None if row.deleted else row.content) for row in page]
        written = self.indexer.reindex(repo, rtype, items)
        self.fulltext.reindex(repo, rtype, items)
        repo.flush()  # this batch's rows go to the database before the next batch is read
        count = sum(1 for _, content in items if content is not None)
        return count, written, (page[-1].id if len(page) == size else None)


def result(counts: dict[str, int], rows: int) -> dict[str, Any]:
    """The Parameters answer: totals, then one ``type`` part per type that had resources."""
    parts = [{"name": "type", "part": [{"name": "type", "valueCode": rtype}, {"name": "count", "valueInteger": n}]}
             for rtype, n in counts.items() if n]
    return {"resourceType": "Parameters", "parameter": [
        {"name": "count", "valueInteger": sum(counts.values())}, {"name": "rows", "valueInteger": rows}, *parts]}


def _batch_size(text: str | None) -> int:
    if text is None:
        return BATCH
    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH:
        raise FhirError(400, INVALID, f"_count (batch size) must be 1 to {MAX_BATCH}", ("_count",))
    return int(text)
