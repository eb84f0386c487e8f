"""Bulk Data Access operations on the FHIR core: $export (system, Patient, Group/[id]), $import, status
polling and cancel (``$export-poll-status`` / ``$import-poll-status``, GET and DELETE), file downloads
(``$bulk-file``). Kick-off writes the job row in its own unit of work and then nudges a runner
(``submit``, set by fhir_server.jobs.background: in-process threads or celery)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fhir_server.auth.stored import same_holder
from fhir_server.errors import (
    EXCEPTION,
    FORBIDDEN,
    INVALID,
    NOT_FOUND,
    NOT_SUPPORTED,
    FhirError,
    Issue,
    bad_request,
    informational,
    operation_outcome,
)
from fhir_server.jobs import bulk_params
from fhir_server.jobs.bulk_import import BLOB_PREFIX
from fhir_server.jobs.store import Job, cancel_job, insert_job, read_job
from fhir_server.outbound import check_url
from fhir_server.rest.operations import Operation, reindex
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository, instant

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
IMPORT_DEFINITION = "urn:fhir-server:OperationDefinition/bulk-import"
NDJSON_TYPES = {"application/fhir+ndjson", "application/ndjson", "application/x-ndjson"}


class BulkOperations:
    def __init__(self, server: FhirServer) -> None:
        self.server = server
        self.submit: Callable[[str], None] = lambda _job_id: None  # replaced by the runner in use

    def register(self) -> None:
        ops = self.server.operations
        ops.register(Operation("export", self.export, EXPORT_DEFINITION, system=True,
                               types=frozenset({"Patient", "Group"}), instance=True))
        ops.register(Operation("import", self.import_, IMPORT_DEFINITION, system=True, affects_state=True))
        # Status URLs and file downloads are addresses the manifest hands out, not operations of the IG.
        for name in ("export-poll-status", "import-poll-status", "reindex-poll-status"):
            ops.register(Operation(name, self.status, "urn:fhir-server:OperationDefinition/bulk-status", system=True))
        ops.register(Operation("bulk-file", self.file, "urn:fhir-server:OperationDefinition/bulk-file", system=True))

    # --- kick-off ----------------------------------------------------------------------------------------

    def _accepted(self, req: FhirRequest, job: Job) -> FhirResponse:
        self.submit(job.id)
        url = f"{req.base_url}/${job.kind}-poll-status?_jobId={job.id}"
        return FhirResponse(202, informational(f"{job.kind.capitalize()} job {job.id} accepted"),
                            {"Content-Location": url})

    def start_job(self, req: FhirRequest, repo: Repository, kind: str, params: dict[str, Any]) -> FhirResponse:
        """Kick-off of another module's asynchronous operation ($reindex): the same job table, runners and
        status URL as bulk data."""
        return self._accepted(req, insert_job(repo, kind, self._request_url(req), params, req.access))

    def _request_url(self, req: FhirRequest) -> str:
        query = "&".join(f"{quote(k)}={quote(v)}" for k, v in req.query)
        return f"{req.base_url}/{req.path}" + (f"?{query}" if query else "")

    def export(self, req: FhirRequest, repo: Repository, resource_type: str | None,
               resource_id: str | None) -> FhirResponse:
        if req.method not in ("GET", "POST"):
            raise FhirError(405, NOT_SUPPORTED, f"{req.method} is not supported on $export")
        if (resource_type == "Patient" and resource_id is not None) or (resource_type == "Group"
                                                                        and resource_id is None):
            raise FhirError(400, NOT_SUPPORTED, "$export runs at the system level, on Patient, or on Group/[id]")
        bulk_params.require_async(req)
        level = {None: "system", "Patient": "patient", "Group": "group"}[resource_type]

        def validate(r: Repository, rtype: str, params: list[tuple[str, str]]) -> None:
            try:
                r.find_ids(rtype, params, limit=1)
            except FhirError as exc:
                raise FhirError(400, [Issue(i.code, f"_typeFilter: {i.diagnostics}", expression=("_typeFilter",))
                                      for i in exc.issues]) from None

        params = bulk_params.export_params(req, repo, level, resource_id, repo.access, validate)
        return self._accepted(req, insert_job(repo, "export", self._request_url(req), params, req.access))

    def import_(self, req: FhirRequest, repo: Repository, _rtype: str | None, _rid: str | None) -> FhirResponse:
        if req.method != "POST":
            raise FhirError(405, NOT_SUPPORTED, "$import takes a POST")
        bulk_params.require_async(req)
        if req.content_type in NDJSON_TYPES:  # the NDJSON itself as the body
            if not req.body:
                raise bad_request("The NDJSON body is empty", ("body",))
            blob = self.server.binary.store.put(iter([req.body]))
            inputs = [{"type": None, "url": BLOB_PREFIX + blob.key}]
        else:
            inputs = _import_inputs(req.json_body())
            for spec in inputs:  # a URL the server may not fetch is refused at kick-off, not in the job
                if not str(spec["url"]).startswith("Binary/"):
                    check_url(str(spec["url"]), self.server.settings, "input.url")
        return self._accepted(req, insert_job(repo, "import", self._request_url(req), {"inputs": inputs},
                                              req.access))

    # --- status, cancel, files ---------------------------------------------------------------------------

    def _job(self, req: FhirRequest, repo: Repository) -> Job:
        job_id = req.param("_jobId")
        if not job_id:
            raise bad_request("_jobId is required", ("_jobId",))
        job = read_job(repo, job_id)
        now = datetime.now(UTC)
        if job is None or job.status == "cancelled" or (job.expires_at is not None and job.expires_at < now):
            raise FhirError(404, NOT_FOUND, f"Bulk job {job_id} is not known (cancelled or expired)", ("_jobId",))
        if not same_holder(job.access, req.access):  # auth: only who started it polls, downloads, cancels
            raise FhirError(403, FORBIDDEN, "The bulk job belongs to another client", ("_jobId",))
        return job

    def status(self, req: FhirRequest, repo: Repository, _rtype: str | None, _rid: str | None) -> FhirResponse:
        job = self._job(req, repo)
        if req.method == "DELETE":
            cancel_job(repo, job.id)
            return FhirResponse(202, informational(f"Bulk job {job.id} cancelled"))
        if req.method != "GET":
            raise FhirError(405, NOT_SUPPORTED, f"{req.method} is not supported on the status URL")
        poll = str(max(1, round(self.server.settings.job_poll_seconds)))
        if job.status in ("queued", "running"):
            return FhirResponse(202, None, {"X-Progress": _progress_text(job), "Retry-After": poll})
        if job.status == "failed":
            return FhirResponse(500, operation_outcome([Issue(EXCEPTION, f"The {job.kind} job failed: {job.error}")]))
        if job.kind == "reindex":
            return FhirResponse(200, reindex.result(job.progress.get("counts", {}), job.progress.get("rows", 0)))
        headers = {"Expires": job.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")} if job.expires_at else {}
        return FhirResponse(200, self._manifest(req, job), headers)

    def _manifest(self, req: FhirRequest, job: Job) -> dict[str, Any]:
        def url(kind: str, n: int) -> str:
            return f"{req.base_url}/$bulk-file?_jobId={job.id}&_file={kind}.{n}"

        p = job.progress
        errors = [{"type": "OperationOutcome", "url": url("error", n), "count": e["count"]}
                  for n, e in enumerate(p.get("errors", []))]
        if job.kind == "export":
            output = [{"type": o["type"], "url": url("output", n), "count": o["count"]}
                      for n, o in enumerate(p.get("output", []))]
        else:
            output = [{"type": t, "count": c} for t, c in sorted(p.get("counts", {}).items())]
        requires = job.owner is not None or bool(self.server.settings.auth_required)
        return {"transactionTime": instant(job.transaction_time), "request": job.request,
                "requiresAccessToken": requires, "output": output, "error": errors}

    def file(self, req: FhirRequest, repo: Repository, _rtype: str | None, _rid: str | None) -> FhirResponse:
        job = self._job(req, repo)
        kind, _, number = (req.param("_file") or "").partition(".")
        files = job.progress.get("output" if kind == "output" else "errors", []) if kind in ("output", "error") \
            else []
        if job.status != "completed" or not number.isdigit() or int(number) >= len(files):
            raise FhirError(404, NOT_FOUND, "No such bulk data file", ("_file",))
        stream = self.server.binary.store.open(files[int(number)]["key"])
        return FhirResponse(200, stream=stream, media_type="application/fhir+ndjson")


def _progress_text(job: Job) -> str:
    p = job.progress
    if job.status == "queued" or not p:
        return "queued"
    if job.kind == "export":
        done = sum(1 for s in p.get("cursor", {}).values() if s.get("done"))
        return f"{p.get('exported', 0)} resources exported; {done} of {len(p.get('types', []))} types done"
    if job.kind == "reindex":
        return f"{sum(p.get('counts', {}).values())} resources reindexed; at {p.get('type', '')}"
    return f"{p.get('imported', 0)} resources imported, {p.get('error_count', 0)} lines refused"


def _import_inputs(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The $import body must be a Parameters resource or NDJSON", ("Parameters",))
    inputs: list[dict[str, Any]] = []
    for p in body.get("parameter", []):
        name = p.get("name")
        if name == "inputFormat" and p.get("valueCode", p.get("valueString")) not in NDJSON_TYPES:
            raise bad_request("inputFormat must be application/fhir+ndjson", ("inputFormat",))
        if name != "input":
            continue
        parts = {q.get("name"): next((v for k, v in q.items() if k.startswith("value")), None)
                 for q in p.get("part", [])}
        url = parts.get("url")
        if not isinstance(url, str) or not (url.startswith(("http://", "https://", "Binary/"))):
            raise bad_request("Each input needs a url part (http(s) URL or Binary/[id])", ("input.url",))
        inputs.append({"type": parts.get("type"), "url": url})
    if not inputs:
        raise FhirError(400, INVALID, "$import needs at least one input", ("input",))
    return inputs


def register_bulk(server: FhirServer) -> BulkOperations:
    ops = BulkOperations(server)
    ops.register()
    server.search.reindex.start_job = ops.start_job  # $reindex with Prefer: respond-async
    return ops
