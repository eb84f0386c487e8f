"""Celery worker subprocesses on a real Redis: bulk export that survives a killed worker, cancel, and the
outbox (retries with backoff, dead letter, CLI and admin view), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import insert, select

from fhir_server.jobs.store import JobStore
from fhir_server.storage.models import OUTBOX
from interfaces.mllp.outbound import TOPIC
from tests.conftest import Backend, LiveServer, _free_port, make_backend, wait_until
from tests.integration.bulk_support import kick_off, poll
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import smart_of
from tests.integration.test_mllp_outbound import FakeLab
from tests.integration.worker_support import ROOT, Stack, fill, make_stack


@pytest.fixture(scope="module")
def stack(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A database of its own: the session's live server (tests/conftest.py) runs the embedded job runner, which
    # takes over a running job whose lease lapsed, as designed; when it won the race against the restarted
    # worker, it finished the "killed worker" export with its own settings (one 45,000-line file).
    tmp = tmp_path_factory.mktemp(f"workers-{backend.name}")
    for private in make_backend(backend.name, tmp):
        yield from make_stack(private, tmp)


@pytest.fixture
def jobs(stack: Stack) -> Iterator[Stack]:
    stack.backend.truncate()
    yield stack
    stack.stop_all()


def _job_id(status_url: str) -> str:
    return status_url.split("_jobId=")[1]


def test_export_of_50000_survives_a_worker_killed_halfway(jobs: Stack) -> None:
    counts = fill(jobs.backend, 5000, 9)
    assert sum(counts.values()) == 50_000
    store = JobStore(jobs.backend.engine)
    first = jobs.start_worker()
    status_url = kick_off(jobs.http, "$export")
    job_id = _job_id(status_url)

    def exported() -> int:
        job = store.get(job_id)
        return int(job.progress.get("exported", 0)) if job else 0

    wait_until(lambda: exported() >= 8000, 120, "the export to be under way")
    jobs.kill(first)
    before = store.get(job_id)
    assert before is not None and before.status == "running" and before.progress["exported"] < 50_000
    files_before = list(before.progress["output"])
    jobs.start_worker()  # claims the job once the dead worker's lease lapses, resumes from its checkpoints
    resp = poll(jobs.http, status_url, timeout=240)
    assert resp.status_code == 200, resp.text
    manifest = resp.json()
    done = store.get(job_id)
    assert done is not None and done.progress["output"][:len(files_before)] == files_before  # resumed, not redone
    by_type: dict[str, int] = {}
    seen: set[str] = set()
    for item in manifest["output"]:
        body = jobs.http.get(item["url"]).content
        lines = body.splitlines()
        assert len(lines) == item["count"] <= 4000
        for line in lines:
            resource = orjson.loads(line)
            seen.add(f"{resource['resourceType']}/{resource['id']}")
        by_type[item["type"]] = by_type.get(item["type"], 0) + item["count"]
    assert by_type == counts and len(seen) == 50_000  # exactly once each


def test_cancelled_export_stops(jobs: Stack) -> None:
    fill(jobs.backend, 3000, 9)
    worker = jobs.start_worker()
    store = JobStore(jobs.backend.engine)
    status_url = kick_off(jobs.http, "$export")
    job_id = _job_id(status_url)
    wait_until(lambda: (j := store.get(job_id)) is not None and j.progress.get("exported", 0) > 0, 120,
               "the export to be under way")
    assert jobs.http.delete(status_url).status_code == 202
    assert jobs.http.get(status_url).status_code == 404
    wait_until(lambda: b"'stopped'" in jobs.log(worker), 60, "the runner to stop")
    job = store.get(job_id)
    assert job is not None and job.status == "cancelled" and job.progress["exported"] < 30_000


def _order_setup(jobs: Stack, port: int) -> str:
    endpoint = jobs.http.post("Endpoint", json={
        "resourceType": "Endpoint", "status": "active", "address": f"mllp://127.0.0.1:{port}",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "hl7v2-mllp"}, "payloadType": [{"text": "ORM^O01"}]}).json()
    org = jobs.http.post("Organization", json={"resourceType": "Organization", "name": "City Lab",
                                               "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}]}).json()
    patient = jobs.http.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Rao"}]}).json()
    order = jobs.http.post("ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24331-1"}]},
        "subject": {"reference": f"Patient/{patient['id']}"},
        "performer": [{"reference": f"Organization/{org['id']}"}]})
    assert order.status_code == 201, order.text
    return str(order.json()["id"])


def _outbox(jobs: Stack) -> list[dict[str, object]]:
    with jobs.backend.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(OUTBOX).order_by(OUTBOX.c.pk))]


def _cli(jobs: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fhir_server.cli", "outbox", *args], cwd=ROOT, env=jobs.env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_outbox_on_workers_retries_with_backoff_then_delivers(jobs: Stack) -> None:
    port = _free_port()  # nothing listens yet: the first attempts fail
    jobs.start_worker()
    order_id = _order_setup(jobs, port)
    wait_until(lambda: any(r["attempts"] >= 2 and r["status"] == "pending" for r in _outbox(jobs)), 60,
               "a failed attempt and a retry")
    row = _outbox(jobs)[0]
    assert row["last_error"] and row["topic"] == TOPIC
    lab = FakeLab(port)
    try:
        wait_until(lambda: _outbox(jobs)[0]["status"] == "done", 60, "delivery once the lab listens")
        assert len(lab.received) == 1 and "ORM^O01" in lab.received[0]
    finally:
        lab.close()
    ack = jobs.http.get(f"ServiceRequest/{order_id}").json()["extension"][0]["extension"][0]
    assert ack == {"url": "code", "valueCode": "AA"}


def test_dead_letter_list_and_retry(jobs: Stack) -> None:
    port = _free_port()
    with jobs.backend.engine.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(insert(OUTBOX).values(topic=TOPIC, key="k-dead", payload={
            "id": "missing", "version": 1, "address": f"mllp://127.0.0.1:{port}", "control": "NW"},
            status="pending", attempts=0, max_attempts=2, next_attempt_at=now, created_at=now))
    jobs.start_worker()
    wait_until(lambda: _outbox(jobs)[0]["status"] == "dead", 60, "the row to be dead-lettered")
    assert _outbox(jobs)[0]["attempts"] == 2
    listed = json.loads(_cli(jobs, "list", "--status", "dead").stdout)
    assert listed["counts"]["dead"] == 1 and listed["rows"][0]["key"] == "k-dead"
    assert "payload" not in listed["rows"][0]  # operators see no clinical content
    local = smart_of(LiveServer(jobs.url, jobs.fhir, jobs.backend, jobs.http))
    token = _user_token(local, "admin", "user/*.rs")["access_token"]  # /admin needs one even with auth off
    admin = jobs.http.get(jobs.url.removesuffix("/fhir") + "/admin/outbox", params={"status": "dead"},
                          headers={"Authorization": f"Bearer {token}"}).json()
    assert [r["key"] for r in admin["rows"]] == ["k-dead"]
    retried = _cli(jobs, "retry", "--dead")
    assert json.loads(retried.stdout) == {"retried": 1}
    wait_until(lambda: _outbox(jobs)[0]["attempts"] >= 1 and _outbox(jobs)[0]["status"] in ("pending", "dead"), 60,
               "the retried row to be attempted again")
    assert _cli(jobs, "retry", "999999").returncode == 1
    wait_until(lambda: _outbox(jobs)[0]["status"] == "dead", 60, "the retried row to die again")
    assert json.loads(_cli(jobs, "discard", "--dead").stdout) == {"discarded": 1}  # the operator gives up on it
    [row] = _outbox(jobs)
    assert row["status"] == "done" and str(row["last_error"]).startswith("discarded by an operator")
    assert _cli(jobs, "discard", "999999").returncode == 1
