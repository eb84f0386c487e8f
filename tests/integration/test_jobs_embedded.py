"""The embedded default's in-process job runner: it picks up jobs a previous run of the process left
queued, or claimed by a runner that died (lease lapsed), both databases."""

from __future__ import annotations

import pytest

from fhir_server.jobs.runner import ThreadRunner
from fhir_server.jobs.store import JobStore
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from tests.conftest import SYSTEM, TENANT_BACKENDS, LiveServer, wait_until

# Also in a non-default tenant: its own schema, through /fhir/{tenant} (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)


def _kick_off(server: FhirServer, base: str) -> str:
    resp = server.handle(FhirRequest("GET", "$export", [("_type", "Patient")], {"prefer": "respond-async"},
                                     base_url=base, access=SYSTEM))
    assert resp.status == 202, resp.resource
    return resp.headers["Content-Location"].split("_jobId=")[1]


def test_runner_start_resumes_queued_and_abandoned_jobs(api: LiveServer) -> None:
    for _ in range(3):
        assert api.http.post("Patient", json={"resourceType": "Patient"}).status_code == 201
    server = FhirServer(api.backend.settings, api.backend.engine)  # a process that has no runner yet
    queued = _kick_off(server, api.url)
    abandoned = _kick_off(server, api.url)
    dead_runner = JobStore(api.backend.engine, lease_seconds=0.001)
    assert dead_runner.claim(abandoned) is not None  # claimed, then the runner "died": its lease lapses
    store = JobStore(api.backend.engine)
    assert store.get(queued).status == "queued" and store.get(abandoned).status == "running"
    runner = ThreadRunner(server)
    runner.start()
    try:
        wait_until(lambda: all(store.get(j).status == "completed" for j in (queued, abandoned)), 60,
                   "both jobs to complete")
    finally:
        runner.stop()
    for job_id in (queued, abandoned):
        job = store.get(job_id)
        assert job is not None and sum(o["count"] for o in job.progress["output"]) == 3
