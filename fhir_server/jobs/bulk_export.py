"""Runs a bulk $export job: NDJSON files per type, streamed from the database by keyset pages.

Rows are read ``bulk_page_size`` at a time ordered by id (``id > last``), each page its own short read,
so memory stays flat and no transaction is held open for the whole export. Content goes out as the text
the database holds (no parse and re-serialise) unless something has to look inside: the token's access
policy or the patient compartment of a Patient / Group export. A file is stored in the blob store when
it is full (``bulk_file_resources``) or its type is done; its checkpoint (file, count, cursor) is saved
with it, so a resumed job redoes at most the file that was being written.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import Text, and_, cast, or_, select, type_coerce

from fhir_server.auth.compartment import patient_compartment_params, patients_of
from fhir_server.binary.store import BlobStore
from fhir_server.jobs.bulk_params import compartment_types, readable_types
from fhir_server.jobs.store import Job, JobStore
from fhir_server.search.tables import REFERENCE
from fhir_server.storage.access import SystemAccess
from fhir_server.storage.models import RESOURCE
from fhir_server.storage.repository import Repository, Version, instant

log = logging.getLogger(__name__)
R = RESOURCE
COHORT_IN_SQL = 1000  # larger cohorts are filtered per row only (no IN list of that size)


class _Stopped(Exception):
    """The job was cancelled or taken over while a file was being written."""


class ExportRun:
    def __init__(self, repo_run: Any, jobs: JobStore, job: Job, blobs: BlobStore, *, page_size: int,
                 file_resources: int, expiry_seconds: float) -> None:
        self.repo_run = repo_run  # (work(repo) -> T) -> T: one read-only unit of work with the job's access
        self.jobs = jobs
        self.job = job
        self.blobs = blobs
        self.page_size = page_size
        self.file_resources = file_resources
        self.expiry_seconds = expiry_seconds
        self.params = job.params
        self.progress: dict[str, Any] = dict(job.progress)
        patients = self.params.get("patients")
        self.patients: set[str] | None = set(patients) if patients is not None else None
        self._renewed = time.monotonic()

    # --- what to export ----------------------------------------------------------------------------------

    def _types(self) -> list[str]:
        def existing(repo: Repository) -> set[str]:
            return {r[0] for r in repo.execute(select(R.c.resource_type).distinct())}

        wanted = self.params.get("types")
        present = self.repo_run(existing)
        candidates = set(wanted) if wanted else present
        if self.params["level"] != "system":
            candidates &= compartment_types()
        return sorted(readable_types(self.job.access, candidates & present))

    def _rows(self, repo: Repository, rtype: str, after: str | None, ids: list[str] | None) -> list[Any]:
        content = cast(R.c.content, Text) if repo.dialect == "postgresql" else type_coerce(R.c.content, Text)
        conds = [R.c.resource_type == rtype, R.c.deleted.is_(False),
                 R.c.last_updated <= self.job.transaction_time]
        if self.params.get("since"):
            conds.append(R.c.last_updated > datetime.fromisoformat(self.params["since"]))
        if self.patients is not None and len(self.patients) <= COHORT_IN_SQL:
            conds.append(self._cohort(rtype))
        if ids is not None:
            conds.append(R.c.id.in_(ids))
        elif after is not None:
            conds.append(R.c.id > after)
        stmt = select(R.c.id, R.c.version_id, R.c.last_updated, content.label("text")).where(and_(*conds)) \
            .order_by(R.c.id)
        return list(repo.execute(stmt if ids is not None else stmt.limit(self.page_size)))

    def _cohort(self, rtype: str) -> Any:
        """A Group / ``patient`` export narrowed in SQL through the reference index (written with every
        version, in its transaction) to the cohort's compartments; ``_keep`` still decides per resource."""
        patients = sorted(self.patients or ())
        params = ("link",) if rtype == "Patient" else patient_compartment_params().get(rtype, ())
        linked = select(REFERENCE.c.resource_id).where(
            REFERENCE.c.resource_type == rtype, REFERENCE.c.param.in_(params), REFERENCE.c.target_type == "Patient",
            REFERENCE.c.target_url.is_(None), REFERENCE.c.target_id.in_(patients))
        return or_(R.c.id.in_(patients), R.c.id.in_(linked)) if rtype == "Patient" else R.c.id.in_(linked)

    def _filtered_ids(self, rtype: str, queries: list[str], after: str | None) -> Iterator[str]:
        """Ids matching any of the _typeFilter searches, ascending, without repeats (a k-way merge)."""
        extra = [("_lastUpdated", "le" + instant(self.job.transaction_time))]
        if self.params.get("since"):
            extra.append(("_lastUpdated", "gt" + instant(datetime.fromisoformat(self.params["since"]))))

        def one(query: str) -> Iterator[str]:
            cursor = after
            params = parse_qsl(query, keep_blank_values=True) + extra
            while True:
                ids = self.repo_run(lambda repo, c=cursor: repo.find_ids(rtype, params, limit=self.page_size,
                                                                         after=c))
                yield from ids
                if len(ids) < self.page_size:
                    return
                cursor = ids[-1]

        last = None
        for rid in heapq.merge(*(one(q) for q in queries)):
            if rid != last:
                yield rid
                last = rid

    def _pages(self, rtype: str, after: str | None) -> Iterator[list[Any]]:
        queries = self.params.get("type_filters", {}).get(rtype)
        if queries:
            batch: list[str] = []
            for rid in self._filtered_ids(rtype, queries, after):
                batch.append(rid)
                if len(batch) >= self.page_size:
                    yield self.repo_run(lambda repo, b=batch: self._rows(repo, rtype, None, b))
                    batch = []
            if batch:
                yield self.repo_run(lambda repo, b=batch: self._rows(repo, rtype, None, b))
            return
        # Read-ahead: the next page is fetched (database time) while this one is written (Python time).
        with ThreadPoolExecutor(1, thread_name_prefix="bulk-read") as pool:
            def fetch(a: str | None) -> list[Any]:
                return list(self.repo_run(lambda repo: self._rows(repo, rtype, a, None)))

            future = pool.submit(fetch, after)
            while True:
                rows = future.result()
                if len(rows) == self.page_size:
                    future = pool.submit(fetch, rows[-1].id)
                if rows:
                    yield rows
                if len(rows) < self.page_size:
                    return

    def _keep(self, rtype: str, row: Any) -> bool:
        access = self.job.access
        if isinstance(access, SystemAccess) and self.params["level"] == "system":
            return True  # the server's own export of everything: nothing to look inside for
        content = orjson.loads(row.text)
        if self.params["level"] != "system":
            members = patients_of(rtype, content)
            if not members or (self.patients is not None and not members & self.patients):
                return False
        return access.can_read(Version(rtype, row.id, row.version_id, row.last_updated,
                                           False, content))

    # --- the run -----------------------------------------------------------------------------------------

    def run(self) -> bool:
        """Export what is left; False when the job was cancelled or taken over (stop without finishing)."""
        if "types" not in self.progress:
            self.progress = {"types": self._types(), "cursor": {}, "output": [], "exported": 0}
            if not self.jobs.checkpoint(self.job, self.progress):
                return False
        for rtype in self.progress["types"]:
            state = self.progress["cursor"].setdefault(rtype, {"after": None, "done": False, "count": 0})
            if state["done"]:
                continue
            if not self._export_type(rtype, state):
                return False
        return self.jobs.finish(self.job, self.progress, self.expiry_seconds)

    def _export_type(self, rtype: str, state: dict[str, Any]) -> bool:
        """Files of up to ``file_resources`` lines, each streamed page by page straight into the blob store
        (no second copy), then checkpointed with the id of its last line as the type's cursor."""
        pages = self._pages(rtype, state["after"])
        carry: list[tuple[str, str]] = []  # kept rows of a page that did not fit into the previous file
        exhausted = False
        while True:
            count = 0
            last: str | None = None

            def chunks() -> Iterator[bytes]:
                nonlocal carry, exhausted, count, last
                while count < self.file_resources:
                    if not carry:
                        rows = next(pages, None)
                        if rows is None:
                            exhausted = True
                            return
                        if not self._renew():
                            raise _Stopped
                        carry = [(row.id, row.text) for row in rows if self._keep(rtype, row)]
                        continue
                    take, carry = carry[:self.file_resources - count], carry[self.file_resources - count:]
                    count += len(take)
                    last = take[-1][0]
                    yield ("\n".join(text for _id, text in take) + "\n").encode()

            try:
                blob = self.blobs.put(chunks())
            except _Stopped:
                return False
            if count:
                self.progress["output"].append({"type": rtype, "key": blob.key, "count": count})
                self.progress["exported"] += count
                state["count"] += count
                state["after"] = last
            state["done"] = exhausted and not carry
            self._renewed = time.monotonic()
            if not self.jobs.checkpoint(self.job, self.progress):
                return False
            if state["done"]:
                return True

    def _renew(self) -> bool:
        stopping = self.jobs.stopping.is_set()  # the process is shutting down: hand the job back now
        if not stopping and time.monotonic() - self._renewed < self.jobs.lease.total_seconds() / 3:
            return True
        self._renewed = time.monotonic()
        return self.jobs.checkpoint(self.job)
