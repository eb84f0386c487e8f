"""Hook points around every write and the transactional outbox, with throwaway hooks and handlers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from fhir_server.errors import FhirError
from fhir_server.hooks import Hook, HookPoint, WriteEvent
from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.storage.repository import Repository
from tests.conftest import SYSTEM, LiveServer, wait_until

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@contextmanager
def hooked(api: LiveServer, point: HookPoint, hook: Hook) -> Iterator[None]:
    api.fhir.hooks.register(point, hook)
    try:
        yield
    finally:
        api.fhir.hooks.unregister(point, hook)


def outbox_rows(api: LiveServer) -> list[Any]:
    with api.backend.engine.connect() as conn:
        return list(conn.execute(select(OUTBOX).order_by(OUTBOX.c.pk)))


def test_before_validate_can_reject_and_normalise(api: LiveServer) -> None:
    def rule(event: WriteEvent, _repo: Repository | None) -> None:
        if event.resource_type == "Patient" and event.resource is not None:
            if not event.resource.get("name"):
                raise FhirError(422, "business-rule", "A hospital Patient needs a name", ("Patient.name",))
            event.resource = {**event.resource, "meta": {"tag": [{"system": "urn:hospital", "code": "checked"}]}}

    with hooked(api, HookPoint.BEFORE_VALIDATE, rule):
        rejected = api.http.post("Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
        accepted = api.http.post("Patient", json={"resourceType": "Patient", "name": [{"text": "A"}]},
                                 headers=FHIR_JSON)
    assert rejected.status_code == 422 and rejected.json()["issue"][0]["expression"] == ["Patient.name"]
    assert accepted.status_code == 201
    assert accepted.json()["meta"]["tag"][0]["code"] == "checked"
    assert len(api.http.get("Patient").json()["entry"]) == 1


def enqueue_on_write(event: WriteEvent, repo: Repository | None) -> None:
    assert repo is not None and event.version is not None
    repo.enqueue("test-topic", f"{event.version.reference}/_history/{event.version.version_id}",
                 {"reference": event.version.reference, "interaction": event.interaction})


def test_outbox_rows_commit_and_roll_back_with_the_change(api: LiveServer) -> None:
    with hooked(api, HookPoint.BEFORE_COMMIT, enqueue_on_write):
        api.http.put("Patient/o1", json={"resourceType": "Patient", "id": "o1"}, headers=FHIR_JSON)
        api.http.delete("Patient/o1")
        failed_tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "o2"}, "request": {"method": "PUT", "url": "Patient/o2"}},
            {"resource": {"resourceType": "Patient", "id": "o3", "birthDate": "never"},
             "request": {"method": "PUT", "url": "Patient/o3"}}]}
        assert api.http.post("", json=failed_tx, headers=FHIR_JSON).status_code == 400
    rows = outbox_rows(api)
    assert [(r.key, r.payload["interaction"], r.status) for r in rows] == [
        ("Patient/o1/_history/1", "create", "pending"), ("Patient/o1/_history/2", "delete", "pending")]


def test_after_commit_runs_only_after_commit_and_cannot_break_a_write(api: LiveServer) -> None:
    seen: list[str] = []

    def record(event: WriteEvent, _repo: Repository | None) -> None:
        assert event.version is not None
        seen.append(f"{event.interaction} {event.version.reference}")
        raise RuntimeError("a broken after-commit hook")

    with hooked(api, HookPoint.AFTER_COMMIT, record):
        ok = api.http.put("Patient/a1", json={"resourceType": "Patient", "id": "a1"}, headers=FHIR_JSON)
        bad = api.http.put("Patient/a2", json={"resourceType": "Patient", "id": "a2", "birthDate": "x"},
                           headers=FHIR_JSON)
    assert ok.status_code == 201 and bad.status_code == 400
    assert seen == ["create Patient/a1"]


def test_dispatcher_retries_with_backoff_then_delivers(api: LiveServer) -> None:
    with hooked(api, HookPoint.BEFORE_COMMIT, enqueue_on_write):
        api.http.put("Patient/r1", json={"resourceType": "Patient", "id": "r1"}, headers=FHIR_JSON)
    dispatcher = OutboxDispatcher(api.backend.engine, backoff_base=0.01)
    calls: list[str] = []

    def flaky(key: str, _payload: dict[str, Any]) -> None:
        calls.append(key)
        if len(calls) < 3:
            raise ConnectionError("receiver down")

    dispatcher.register("test-topic", flaky)
    wait_until(lambda: dispatcher.run_once() == 1, 10, "delivery after retries")
    row = outbox_rows(api)[0]
    assert row.status == "done" and row.attempts == 3 and len(calls) == 3


def test_dispatcher_dead_letters_after_max_attempts(api: LiveServer) -> None:
    api.fhir.uow.run(lambda repo: repo.enqueue("test-topic", "k1", {}, max_attempts=2), write=True, access=SYSTEM)
    dispatcher = OutboxDispatcher(api.backend.engine, backoff_base=0.001)

    def always_fails(_key: str, _payload: dict[str, Any]) -> None:
        raise ValueError("bad payload")

    dispatcher.register("test-topic", always_fails)
    wait_until(lambda: (dispatcher.run_once(), outbox_rows(api)[0].status)[1] == "dead", 10, "dead letter")
    row = outbox_rows(api)[0]
    assert row.attempts == 2 and row.last_error == "bad payload"


def test_a_crashed_delivery_is_claimed_again_after_its_lease(api: LiveServer) -> None:
    api.fhir.uow.run(lambda repo: repo.enqueue("test-topic", "k2", {"n": 1}), write=True, access=SYSTEM)
    crashed = OutboxDispatcher(api.backend.engine, lease=timedelta(milliseconds=200))
    crashed.register("test-topic", lambda _k, _p: None)
    assert len(crashed.claim()) == 1  # claimed, then the process "dies" before delivering ...
    crashed.stop(release=False)  # ... and its heartbeat with it: the lease is no longer renewed
    survivor = OutboxDispatcher(api.backend.engine)
    got: list[str] = []
    survivor.register("test-topic", lambda key, _p: got.append(key))
    assert survivor.run_once() == 0  # still leased
    wait_until(lambda: survivor.run_once() == 1, 10, "re-delivery after the lease")
    assert got == ["k2"]
    assert outbox_rows(api)[0].attempts == 1  # the crashed claim made no request: it cost no attempt


def test_two_dispatchers_never_deliver_the_same_row_twice_at_once(api: LiveServer) -> None:
    for i in range(40):
        api.fhir.uow.run(lambda repo, i=i: repo.enqueue("test-topic", f"k{i}", {}), write=True, access=SYSTEM)
    got: list[str] = []
    lock = threading.Lock()

    def handler(key: str, _payload: dict[str, Any]) -> None:
        with lock:
            got.append(key)

    dispatchers = [OutboxDispatcher(api.backend.engine, batch=5) for _ in range(2)]
    for d in dispatchers:
        d.register("test-topic", handler)
    threads = [threading.Thread(target=lambda d=d: [d.run_once() for _ in range(10)]) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(f"k{i}" for i in range(40))


def test_running_dispatcher_thread_delivers_promptly(api: LiveServer) -> None:
    dispatcher = OutboxDispatcher(api.backend.engine)
    got: list[str] = []
    dispatcher.register("test-topic", lambda key, _p: got.append(key))
    dispatcher.start(poll_seconds=30)  # only a wake-up can make it look before 30 s
    try:
        api.fhir.uow.run(lambda repo: repo.enqueue("test-topic", "prompt", {}), write=True, access=SYSTEM)
        dispatcher.wake()
        wait_until(lambda: got == ["prompt"], 10, "prompt delivery")
    finally:
        dispatcher.stop()


def test_an_internal_error_is_a_500_outcome_without_a_stack_trace(api: LiveServer) -> None:
    def broken(_event: WriteEvent, _repo: Repository | None) -> None:
        raise KeyError("secret internal detail")

    with hooked(api, HookPoint.BEFORE_COMMIT, broken):
        r = api.http.post("Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert r.status_code == 500
    assert r.json() == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "exception", "diagnostics": "Internal server error"}]}
    assert "Traceback" not in r.text and "secret" not in r.text
    assert api.http.get("Patient").json()["entry"] == []  # rolled back
