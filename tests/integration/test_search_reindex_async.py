"""$reindex with ``Prefer: respond-async``: a job with a status URL, batches with checkpoints, resumed
after a runner dies. SQLite and PostgreSQL, through the HTTP server."""

from __future__ import annotations

from sqlalchemy import delete, select

from fhir_server.jobs.runner import ThreadRunner
from fhir_server.jobs.store import JobStore
from fhir_server.jobs.tables import BULK_JOB
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.search.fulltext.tables import SEARCH_TEXT
from fhir_server.search.tables import TABLES
from tests.conftest import SYSTEM, LiveServer, wait_until
from tests.integration.bulk_support import kick_off, poll
from tests.integration.test_search_custom_params import NICKNAME, ids, patient, post


def drop_index_rows(api: LiveServer, resource_ids: list[str]) -> None:
    with api.backend.engine.begin() as conn:
        for table in [*TABLES.values(), SEARCH_TEXT]:
            conn.execute(delete(table).where(table.c.resource_id.in_(resource_ids)))


def counts(parameters: dict[str, object]) -> dict[str, int]:
    return {str(p["name"]): int(p["valueInteger"]) for p in parameters["parameter"]  # type: ignore[index,union-attr]
            if "valueInteger" in p}


def test_async_reindex_runs_as_a_job(api: LiveServer) -> None:
    old = [post(api, patient(f"Raju{n}")) for n in range(5)]
    sp_id = post(api, NICKNAME)
    try:
        assert ids(api, "Patient?nickname=raju") == set()  # written before the parameter: not indexed yet
        status_url = kick_off(api.http, "Patient/$reindex?_count=2", json={"resourceType": "Parameters"})
        assert "$reindex-poll-status?_jobId=" in status_url
        done = poll(api.http, status_url)
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["resourceType"] == "Parameters"
        assert counts(body)["count"] == 5 and counts(body)["rows"] > 0
        assert ids(api, "Patient?nickname=raju") == set(old)
        assert api.http.delete(status_url).status_code == 202  # a finished job is forgotten
        assert api.http.get(status_url).status_code == 404
    finally:  # the registry outlives the store's truncation between tests: other modules expect no nickname
        assert api.http.delete(f"SearchParameter/{sp_id}").status_code in (200, 204)


def test_async_reindex_refuses_what_the_sync_one_refuses(api: LiveServer) -> None:
    resp = api.http.post("Patient/$reindex?_count=0", json={"resourceType": "Parameters"},
                         headers={"Prefer": "respond-async"})
    assert resp.status_code == 400 and resp.json()["issue"][0]["expression"] == ["_count"]
    with api.backend.engine.connect() as conn:  # no job was recorded for the refused request
        assert conn.execute(select(BULK_JOB.c.id).where(BULK_JOB.c.request.contains("_count=0"))).first() is None


def test_a_dead_runners_reindex_job_resumes_after_its_last_checkpoint(api: LiveServer) -> None:
    pids = sorted(post(api, {"resourceType": "Patient", "name": [{"family": "Resume"}]}) for _ in range(6))
    server = FhirServer(api.backend.settings, api.backend.engine)  # a process with no runner yet
    resp = server.handle(FhirRequest("POST", "Patient/$reindex", [("_count", "2")],
                                     {"prefer": "respond-async", "content-type": "application/fhir+json"},
                                     body=b'{"resourceType":"Parameters"}', base_url=api.url, access=SYSTEM))
    assert resp.status == 202, resp.resource
    job_id = resp.headers["Content-Location"].split("_jobId=")[1]
    # A runner did the first two batches (4 patients), checkpointed, then died: its lease lapses.
    dead = JobStore(api.backend.engine, lease_seconds=0.001)
    job = dead.claim(job_id)
    assert job is not None
    assert dead.checkpoint(job, {"type": "Patient", "after": pids[3], "counts": {"Patient": 4}, "rows": 0})
    drop_index_rows(api, pids)  # so what the next runner reindexes shows
    runner = ThreadRunner(server)
    runner.start()
    store = JobStore(api.backend.engine)
    try:
        wait_until(lambda: store.get(job_id).status == "completed", 60, "the reindex job to complete")  # type: ignore[union-attr]
    finally:
        runner.stop()
    finished = store.get(job_id)
    assert finished is not None and finished.progress["counts"] == {"Patient": 6}
    # Only the patients after the checkpoint were reindexed: the job went on, it did not start again.
    assert ids(api, "Patient?family=resume") == set(pids[4:])
