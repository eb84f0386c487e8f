"""Runs an asynchronous ``$reindex`` job (``Prefer: respond-async``): the types in order, keyset batches.

Each batch is its own unit of work (read the next resources by id, replace their index and full-text rows,
commit), followed by a checkpoint holding the type and the last id done. A runner that dies leaves the job
to the next one (lease), which goes on after the last checkpointed batch; redoing a batch whose commit
landed but whose checkpoint did not is harmless, since reindexing replaces rows. Reading by id rather than
by a snapshot is enough: a resource written meanwhile was indexed by its own write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_server.jobs.store import Job, JobStore
from fhir_server.rest.operations.reindex import Reindex
from fhir_server.storage.repository import Repository

RepoRun = Callable[[Callable[[Repository], Any]], Any]


class ReindexRun:
    def __init__(self, write_run: RepoRun, jobs: JobStore, job: Job, reindex: Reindex, *,
                 expiry_seconds: float) -> None:
        self.write_run = write_run
        self.jobs = jobs
        self.job = job
        self.reindex = reindex
        self.expiry_seconds = expiry_seconds
        self.types: list[str] = list(job.params["types"])
        self.size = int(job.params["batch"])
        self.progress: dict[str, Any] = dict(job.progress) or {
            "type": self.types[0] if self.types else "", "after": "", "counts": {}, "rows": 0}

    def run(self) -> bool:
        """True when every type is done (the job is completed); False when told to stop (cancel, shutdown,
        another runner holds the job)."""
        p = self.progress
        start = self.types.index(p["type"]) if p["type"] in self.types else len(self.types)
        for rtype in self.types[start:]:
            after: str | None = p["after"] if rtype == p["type"] else ""
            while after is not None:
                def work(repo: Repository, rtype: str = rtype, after: str = after) -> tuple[int, int, str | None]:
                    return self.reindex.batch(repo, rtype, after, self.size)

                count, written, after = self.write_run(work)
                counts = dict(p["counts"])
                counts[rtype] = counts.get(rtype, 0) + count
                p = self.progress = {"type": rtype, "after": after or "", "counts": counts,
                                     "rows": p["rows"] + written}
                if after is not None and not self.jobs.checkpoint(self.job, p):
                    return False
            nxt = self.types.index(rtype) + 1
            p = self.progress = {**p, "type": self.types[nxt] if nxt < len(self.types) else "", "after": ""}
            if not self.jobs.checkpoint(self.job, p):
                return False
        return self.jobs.finish(self.job, p, self.expiry_seconds)
