"""The background AuditEvent writer (fhir_server/audit/recorder.py) on both databases: a read's AuditEvent
appears without anyone flushing, shutdown writes what is still queued, a full queue makes the caller write
its own event (never a drop), and FHIR_AUDIT_BACKGROUND=false writes it before the read is answered."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from fhir_server.app import create_app
from fhir_server.audit.events import Actor, Record, interaction
from fhir_server.audit.recorder import AuditRecorder
from fhir_server.rest.server import FhirServer
from fhir_server.storage.models import RESOURCE
from tests.conftest import Backend, _free_port, uvicorn_config, wait_until


@dataclass
class Running:
    fhir: FhirServer
    http: httpx.Client
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def start(backend: Backend) -> Iterator[object]:
    """Starts a real uvicorn server with audit on (and the given settings); flushes and stops it afterwards."""
    running: list[Running] = []

    def _start(**settings: object) -> Running:
        fhir = FhirServer(backend.settings.model_copy(update={"audit_enabled": True, **settings}), backend.engine)
        server = uvicorn.Server(uvicorn_config(create_app(fhir.settings, fhir), host="127.0.0.1", port=_free_port(),
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, 20, "uvicorn to start")
        port = server.servers[0].sockets[0].getsockname()[1]
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir/", timeout=30)
        running.append(Running(fhir, http, server, thread))
        return running[-1]

    yield _start
    for r in running:
        r.http.close()
        if r.thread.is_alive():
            r.stop()
        assert r.fhir.audit is not None
        r.fhir.audit.recorder.flush()  # nothing left for the next test's emptied store


def audits_naming(backend: Backend, reference: str) -> int:
    with backend.engine.connect() as conn:
        rows = conn.execute(select(RESOURCE.c.content).where(RESOURCE.c.resource_type == "AuditEvent")).scalars()
        return sum(1 for content in rows if reference in str(content))


def audit_count(backend: Backend) -> int:
    with backend.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(RESOURCE)
                                .where(RESOURCE.c.resource_type == "AuditEvent")).scalar_one())


def new_patient(http: httpx.Client) -> str:
    r = http.post("Patient", json={"resourceType": "Patient", "name": [{"family": uuid.uuid4().hex}]})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_reads_audit_event_is_written_in_the_background(backend: Backend, start) -> None:  # type: ignore[no-untyped-def]
    run = start()
    pid = new_patient(run.http)
    assert audits_naming(backend, f"Patient/{pid}") == 1  # the create's, in its own transaction
    assert run.http.get(f"Patient/{pid}").status_code == 200
    wait_until(lambda: audits_naming(backend, f"Patient/{pid}") == 2, 10, "the read's AuditEvent")


def test_shutdown_writes_the_queued_audit_events(backend: Backend, start) -> None:  # type: ignore[no-untyped-def]
    run = start()
    assert run.fhir.audit is not None
    run.fhir.audit.recorder.linger = 60.0  # the writer holds its batch open: only shutdown writes it
    pid = new_patient(run.http)
    for _ in range(5):
        assert run.http.get(f"Patient/{pid}").status_code == 200
    assert audits_naming(backend, f"Patient/{pid}") == 1
    run.stop()  # the app's shutdown closes the recorder
    assert audits_naming(backend, f"Patient/{pid}") == 6


class _Paused(AuditRecorder):
    """The real recorder with its writer thread not started yet: the queue can only fill."""

    def _start(self) -> None:
        pass

    def resume(self) -> None:
        AuditRecorder._start(self)


def test_a_full_queue_makes_the_caller_write_its_event(backend: Backend, start) -> None:  # type: ignore[no-untyped-def]
    fhir = start().fhir
    recorder = _Paused(fhir.uow, max_queued=2, put_timeout=0.01)
    before = audit_count(backend)
    records = [Record(interaction("read"), "R", 200, Actor("10.0.0.1"), targets=[f"Observation/{i}"])
               for i in range(3)]
    recorder.record(records[0])
    recorder.record(records[1])
    assert audit_count(backend) == before  # queued
    recorder.record(records[2])  # the queue is full: written by this caller, now
    assert audit_count(backend) == before + 1 and audits_naming(backend, "Observation/2") >= 1
    recorder.resume()
    recorder.close()
    assert audit_count(backend) == before + 3 and recorder.failed == 0


def test_without_background_a_read_is_audited_before_it_is_answered(backend: Backend, start) -> None:  # type: ignore[no-untyped-def]
    run = start(audit_background=False)
    pid = new_patient(run.http)
    assert run.http.get(f"Patient/{pid}").status_code == 200
    assert audits_naming(backend, f"Patient/{pid}") == 2  # no waiting: it was written before the answer
