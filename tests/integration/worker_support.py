"""Celery worker subprocesses on a real Redis, an API server that sends them work, and a fast filler
(no tests here). Redis comes from FHIR_TEST_REDIS_URL (scripts/test.sh starts one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import uvicorn

from fhir_server.app import create_app
from fhir_server.rest.server import FhirServer
from fhir_server.storage.bulk import BulkRows
from fhir_server.storage.models import RESOURCE, RESOURCE_HISTORY
from tests.conftest import PROCESS_START_TIMEOUT, Backend, _free_port, uvicorn_config, wait_until, xdist_worker_index

ROOT = Path(__file__).resolve().parents[2]


def redis_url() -> str:
    url = os.environ.get("FHIR_TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("FHIR_TEST_REDIS_URL is not set: CI must run the worker tests (scripts/test.sh)")
        pytest.skip("Redis not configured (set FHIR_TEST_REDIS_URL=$(bash scripts/redis.sh))")
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return url
    # Each xdist worker on a database of its own (1..15; 0 is the serial run's): besides the per-stack queue
    # names, celery's broadcast and reply keys of one worker's subprocesses never reach another's.
    return urlunsplit(urlsplit(url)._replace(path=f"/{1 + xdist_worker_index() % 15}"))


@dataclass
class Stack:
    """An API server in broker mode (it runs no jobs itself) plus worker processes on demand."""

    url: str
    http: httpx.Client
    fhir: FhirServer
    backend: Backend
    env: dict[str, str]
    logs: Path
    workers: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "worker", "--concurrency", "3"],
                                cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append((proc, log))
        wait_until(lambda: b"ready." in self.log(proc) or proc.poll() is not None, PROCESS_START_TIMEOUT,
                   "the worker to start")
        assert proc.poll() is None, self.log(proc).decode()[-3000:]
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> bytes:
        index = [p for p, _ in self.workers].index(proc)
        return (self.logs / f"worker-{index}.log").read_bytes()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: a crash
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc, log in self.workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log.close()
        self.workers.clear()


def make_stack(backend: Backend, logs: Path) -> Iterator[Stack]:
    queue = f"fhir-test-{uuid.uuid4().hex[:8]}"  # other test sessions on the same Redis never see our tasks
    broker = redis_url()
    settings = backend.settings.model_copy(update={"broker_url": broker, "broker_queue": queue,
                                                   "job_poll_seconds": 0.3})
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env.update({"FHIR_DATABASE_URL": settings.database_url, "FHIR_BINARY_STORE_URL": settings.binary_store_url,
                "FHIR_BROKER_URL": broker, "FHIR_BROKER_QUEUE": queue, "FHIR_JOB_POLL_SECONDS": "0.3",
                "FHIR_JOB_LEASE_SECONDS": "2", "FHIR_OUTBOX_LEASE_SECONDS": "3", "FHIR_TERMINOLOGY_PRELOAD": "false",
                "FHIR_BULK_FILE_RESOURCES": "4000", "FHIR_BULK_PAGE_SIZE": "500", "FHIR_DB_POOL_SIZE": "5"})
    fhir = FhirServer(settings, backend.engine)
    app = create_app(settings, fhir)
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "uvicorn to start")
    base = f"http://127.0.0.1:{port}/fhir"
    with httpx.Client(base_url=base + "/", timeout=60, headers={"Accept": "application/fhir+json"}) as http:
        stack = Stack(base, http, fhir, backend, env, logs)
        try:
            yield stack
        finally:
            stack.stop_all()
    server.should_exit = True
    thread.join(timeout=20)


def fill(backend: Backend, patients: int, observations_each: int) -> dict[str, int]:
    """Stored resources written as the repository writes a create (current + history row), in bulk:
    50,000 resources through REST would take minutes on this machine. No search index rows."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = BulkRows()
    n = 0
    with backend.engine.begin() as conn:
        for p in range(patients):
            pid = f"fill-p{p:06d}"
            batch = [("Patient", pid, {"gender": "female"})]
            batch += [("Observation", f"fill-o{p:06d}-{o:03d}",
                       {"status": "final", "code": {"text": "hb"}, "subject": {"reference": f"Patient/{pid}"}})
                      for o in range(observations_each)]
            for rtype, rid, body in batch:
                moment = start + timedelta(milliseconds=n)
                stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                content: dict[str, Any] = {"resourceType": rtype, "id": rid,
                                           "meta": {"versionId": "1", "lastUpdated": stamp}, **body}
                row = {"resource_type": rtype, "id": rid, "version_id": 1, "last_updated": moment,
                       "deleted": False, "content": content}
                rows.add(RESOURCE, row)
                rows.add(RESOURCE_HISTORY, {**row, "method": "POST"})
                n += 1
            if n % 5000 < observations_each + 1:
                rows.flush(conn)
        rows.flush(conn)
    return {"Patient": patients, "Observation": patients * observations_each}
