"""Runs a bulk $import job: NDJSON lines through the same write path as REST, in batches.

Each input (an http(s) URL, a ``Binary/<id>`` holding NDJSON, or a body uploaded at kick-off) is read as
a stream of lines. Lines go in batches of ``BATCH`` through one unit of work each: a line with an ``id``
is an update (PUT semantics: the id is kept), one without is a create, so validation, access checks,
hooks and search indexing are exactly those of REST, save referential integrity: inputs come one file
per type in any order, so their references are not checked (rest/integrity.py ``suspended``). A line that
fails becomes an OperationOutcome in an error NDJSON file (with its line number and the element at fault)
and the import goes on: a batch whose
unit of work fails is re-run line by line, each line its own unit of work. The checkpoint after every
batch records the lines done per input, so a resumed job starts after the last checkpointed batch; lines
without an id get one derived from their position, so re-running a batch never creates duplicates.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

from fhir_server.binary.content import pointer
from fhir_server.binary.store import BlobStore
from fhir_server.config import Settings
from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, STRUCTURE, FhirError, Issue, operation_outcome
from fhir_server.jobs.store import Job, JobStore
from fhir_server.outbound import request_guard
from fhir_server.rest import integrity
from fhir_server.storage.repository import Repository
from fhir_server.storage.statistics import analyze

log = logging.getLogger(__name__)
BATCH = 200
BLOB_PREFIX = "urn:fhir-server:bulk-upload:"

RepoRun = Callable[[Callable[[Repository], Any]], Any]


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        yield from complete
    if rest:
        yield rest


def _http_chunks(url: str, settings: Settings) -> Iterator[bytes]:
    guard = request_guard(settings, "input.url")  # every hop, redirects included (fhir_server/outbound.py)
    with httpx.Client(timeout=60, follow_redirects=True, event_hooks={"request": [guard]}) as client, \
            client.stream("GET", url) as resp:
        if resp.status_code != 200:
            raise FhirError(400, INVALID, f"Fetching {url} answered HTTP {resp.status_code}", ("input.url",))
        yield from resp.iter_bytes()


def _outcome_line(exc: FhirError, source: str, line: int) -> bytes:
    issues = [Issue(i.code, f"{source} line {line}: {i.diagnostics}", i.severity, i.expression)
              for i in exc.issues]
    outcome = operation_outcome(issues)
    for issue in outcome["issue"]:
        issue["location"] = [f"Line[{line}]"]
    return orjson.dumps(outcome) + b"\n"


class ImportRun:
    def __init__(self, read_run: RepoRun, write_run: RepoRun, jobs: JobStore, job: Job, blobs: BlobStore, *,
                 expiry_seconds: float, settings: Settings) -> None:
        self.settings = settings
        self.read_run = read_run
        self.write_run = write_run
        self.jobs = jobs
        self.job = job
        self.blobs = blobs
        self.expiry_seconds = expiry_seconds
        self.progress: dict[str, Any] = dict(job.progress) or {
            "inputs": [{"line": 0, "done": False} for _ in job.params["inputs"]],
            "counts": {}, "errors": [], "error_count": 0, "imported": 0}

    def _source(self, url: str) -> Iterator[bytes]:
        if url.startswith(BLOB_PREFIX):
            return self.blobs.open(url[len(BLOB_PREFIX):])
        if url.startswith("Binary/"):
            binary = self.read_run(lambda repo: repo.read("Binary", url.split("/", 1)[1]))
            blob = pointer(binary.content)
            if blob is None:
                raise FhirError(400, INVALID, f"{url} holds no content", ("input.url",))
            return self.blobs.open(blob.key)
        return _http_chunks(url, self.settings)

    def run(self) -> bool:
        for index, spec in enumerate(self.job.params["inputs"]):
            state = self.progress["inputs"][index]
            if state["done"]:
                continue
            batch: list[tuple[int, bytes]] = []
            for number, line in enumerate(_lines(self._source(spec["url"])), start=1):
                if number <= state["line"] or not line.strip():
                    continue
                batch.append((number, line))
                if len(batch) >= BATCH:
                    if not self._apply(spec, state, batch):
                        return False
                    batch = []
            if not self._apply(spec, state, batch, done=True):
                return False
        analyze(self.jobs.engine)  # statistics for what was imported, before the job says done
        return self.jobs.finish(self.job, self.progress, self.expiry_seconds)

    def _parse(self, spec: dict[str, Any], line: bytes) -> tuple[str, dict[str, Any]]:
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FhirError(400, STRUCTURE, f"The line is not valid JSON: {exc}") from None
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if rtype not in resource_types():
            raise FhirError(400, STRUCTURE, "The line is not a FHIR resource", ("resourceType",))
        if spec.get("type") and rtype != spec["type"]:
            raise FhirError(400, INVALID, f"A {rtype} in an input declared as {spec['type']}", ("resourceType",))
        return str(rtype), resource

    def _write(self, repo: Repository, rtype: str, resource: dict[str, Any]) -> None:
        rid = resource.get("id")
        # Inputs come one file per type in any order (Patient after Observation): references are not checked.
        with integrity.suspended("bulk $import"):
            if isinstance(rid, str) and rid:
                repo.update(rtype, rid, resource)
            else:
                repo.create(rtype, resource)

    def _with_id(self, spec: dict[str, Any], number: int, resource: dict[str, Any]) -> dict[str, Any]:
        """A line without an id gets one derived from (job, input, line): a batch re-run after a crash (its
        writes committed, its checkpoint not) updates the same resources instead of creating them twice."""
        if resource.get("id"):
            return resource
        index = self.job.params["inputs"].index(spec)
        return {**resource, "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bulk-import:{self.job.id}:{index}:{number}"))}

    def _apply(self, spec: dict[str, Any], state: dict[str, Any], batch: list[tuple[int, bytes]], *,
               done: bool = False) -> bool:
        errors: list[bytes] = []
        written: list[str] = []
        parsed: list[tuple[int, str, dict[str, Any]]] = []
        for number, line in batch:
            try:
                rtype, resource = self._parse(spec, line)
                parsed.append((number, rtype, self._with_id(spec, number, resource)))
            except FhirError as exc:
                errors.append(_outcome_line(exc, spec["url"], number))

        def all_lines(repo: Repository) -> None:
            for _number, rtype, resource in parsed:
                self._write(repo, rtype, resource)

        try:
            if parsed:
                self.write_run(all_lines)
            written = [rtype for _n, rtype, _r in parsed]
        except FhirError:  # some line is refused: each line alone, so only the refused ones are left out
            for number, rtype, resource in parsed:
                def one(repo: Repository, t: str = rtype, r: dict[str, Any] = resource) -> None:
                    self._write(repo, t, r)

                try:
                    self.write_run(one)
                    written.append(rtype)
                except FhirError as exc:
                    errors.append(_outcome_line(exc, spec["url"], number))
        for rtype in written:
            self.progress["counts"][rtype] = self.progress["counts"].get(rtype, 0) + 1
        self.progress["imported"] += len(written)
        if errors:
            blob = self.blobs.put(iter([b"".join(errors)]))
            self.progress["errors"].append({"key": blob.key, "count": len(errors)})
            self.progress["error_count"] += len(errors)
        if batch:
            state["line"] = batch[-1][0]
        state["done"] = done
        return self.jobs.checkpoint(self.job, self.progress)
