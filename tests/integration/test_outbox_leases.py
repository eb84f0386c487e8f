"""Outbox leases and retry budgets (issue 21 items 3-4) with real dispatcher processes: ``fhir-server serve``
(the embedded dispatcher) and ``fhir-server worker`` (celery, when Redis is configured), killed with SIGKILL
mid-batch, and a receiver on loopback that holds requests or answers 503.

- An attempt is counted when the request is made: crashes cost the rows they never sent nothing, so no row
  is dead-lettered before ``max_attempts`` real requests, and ``attempts`` equals what the receiver saw.
- A dead dispatcher's rows wait only its short lease; a live one renews its lease while a receiver hangs,
  so a second dispatcher never sends a row that is still in flight, and other subscriptions keep flowing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import httpx
import pytest
from sqlalchemy import select, update

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import OutboxDispatcher
from fhir_server.subscriptions import install_delivery
from fhir_server.subscriptions.engine import NOTIFY_TOPIC
from tests.conftest import PROCESS_START_TIMEOUT, LiveServer, _free_port, wait_until
from tests.integration.subscription_receiver import Received, Receiver, start_receiver
from tests.integration.test_subscriptions import status
from tests.integration.test_subscriptions_backport import backport, event_numbers, params, topic
from tests.integration.worker_support import redis_url

ROOT = Path(__file__).resolve().parents[2]
LOINC = "http://loinc.org"


class Dispatchers:
    """Dispatcher processes on the test's database: ``serve`` (embedded) or ``worker`` (celery)."""

    def __init__(self, api: LiveServer, logs: Path, kind: str, lease: float) -> None:
        self.kind, self.logs = kind, logs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        self.env.update({"FHIR_DATABASE_URL": api.backend.settings.database_url, "FHIR_TERMINOLOGY_PRELOAD": "false",
                         "FHIR_BINARY_STORE_URL": api.backend.settings.binary_store_url, "FHIR_DB_POOL_SIZE": "5",
                         "FHIR_AUDIT_ENABLED": "false", "FHIR_OUTBOX_LEASE_SECONDS": str(lease),
                         "FHIR_OUTBOX_POLL_SECONDS": "0.1", "FHIR_JOB_POLL_SECONDS": "0.1"})
        if kind == "worker":
            self.env.update({"FHIR_BROKER_URL": redis_url(), "FHIR_BROKER_QUEUE": f"fhir-test-{uuid.uuid4().hex[:8]}"})
        self.procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, count: int = 1) -> list[subprocess.Popen[bytes]]:
        """``count`` processes, started side by side (a start takes long on a busy machine)."""
        started = [self._launch() for _ in range(count)]
        for proc, ready in started:
            wait_until(lambda: proc.poll() is not None or ready(), PROCESS_START_TIMEOUT,  # noqa: B023
                       f"fhir-server {self.kind} to start")
            assert proc.poll() is None, f"fhir-server {self.kind} exited: see {self.logs}"
        return [proc for proc, _ready in started]

    def _launch(self) -> tuple[subprocess.Popen[bytes], Callable[[], bool]]:
        path = self.logs / f"{self.kind}-{len(self.procs)}.log"
        log = path.open("wb")
        port = _free_port()
        argv = ["worker", "--concurrency", "2"] if self.kind == "worker" else \
            ["serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", *argv], cwd=ROOT, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))

        def ready() -> bool:
            if self.kind == "worker":
                return b"ready." in path.read_bytes()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        return proc, ready

    def stop_all(self) -> None:
        for proc, log in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            log.close()


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = start_receiver()
    yield receiver
    receiver.close()


def _kinds() -> list[str]:
    return ["serve", "worker"]


def _dispatchers(api: LiveServer, tmp_path: Path, kind: str, lease: float) -> Dispatchers:
    if kind == "worker":
        if api.backend.name == "sqlite":
            pytest.skip("celery workers serve PostgreSQL deployments (the embedded default runs on SQLite)")
        redis_url()  # skips without Redis
    return Dispatchers(api, tmp_path, kind, lease)


def _number(item: Received) -> int | None:
    if not item.body:
        return None
    bundle = item.json()
    numbers = event_numbers(bundle) if params(bundle)["type"] == ["event-notification"] else []
    return numbers[0] if numbers else None


def _activate(api: LiveServer, endpoint: str) -> str:
    """A Backport subscription (event numbers), its handshake delivered in this process."""
    sid = str(backport(api, endpoint, content="id-only").json()["id"])
    here = OutboxDispatcher(api.backend.engine, backoff_base=0.001)
    install_delivery(api.fhir, here, timeout=5)
    wait_until(lambda: (here.run_once(), status(api, sid)["status"])[1] == "active", 30, "the handshake")
    return sid


def _changes(api: LiveServer, n: int, patient: str = "X") -> None:
    """n matching Observations in one transaction: their notifications are all due at once (one batch)."""
    if api.http.get(f"Patient/{patient}").status_code == 404:
        assert api.http.put(f"Patient/{patient}", json={"resourceType": "Patient", "id": patient}).status_code == 201
    obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient}"},
           "code": {"coding": [{"system": LOINC, "code": "1-1"}]}}
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}} for _ in range(n)]}
    response = api.http.post("", json=bundle)
    assert response.status_code == 200, response.text


def _rows(api: LiveServer, sid: str) -> dict[int, tuple[str, int, datetime]]:
    """event number -> (status, attempts, next_attempt_at) of the subscription's notification rows."""
    with api.backend.engine.connect() as conn:
        rows = conn.execute(select(OUTBOX.c.key, OUTBOX.c.status, OUTBOX.c.attempts, OUTBOX.c.next_attempt_at).where(
            OUTBOX.c.topic == NOTIFY_TOPIC, OUTBOX.c.key.like(f"Subscription/{sid}/event/%"))).all()
    return {int(r.key.rsplit("/", 1)[1]): (r.status, r.attempts, r.next_attempt_at) for r in rows}


@pytest.mark.parametrize("kind", _kinds())
def test_kills_mid_batch_and_a_503_dead_letter_nothing_and_attempts_are_real_requests(
        api: LiveServer, hook: Receiver, tmp_path: Path, kind: str) -> None:
    n, kills, max_attempts, lease = 12, 2, 3, 2.0
    procs = _dispatchers(api, tmp_path, kind, lease)
    try:
        topic(api)
        sid = _activate(api, hook.url)
        _changes(api, n)
        with api.backend.engine.begin() as conn:  # a small budget: the old per-claim charge exhausts it
            conn.execute(update(OUTBOX).where(OUTBOX.c.topic == NOTIFY_TOPIC).values(max_attempts=max_attempts))
        generation = {"n": 0, "seen": 0, "answered_503": 0}

        def hold(item: Received) -> bool:
            """Called for every request before it is answered (with ``hook.status``)."""
            if _number(item) is None:
                return False
            generation["seen"] += 1
            if generation["n"] < kills:
                return generation["seen"] == 2  # mid-batch: this process's second request hangs until it is dead
            # The last process: its first request is answered 503, every other one 200 (one subscription's
            # requests come one after another, so the next one is asked only after this answer).
            hook.status = 503 if not generation["answered_503"] else 200
            generation["answered_503"] += 1
            return False

        hook.hold = hold
        for _ in range(kills):
            hook.holding.clear()
            hook.release.clear()
            [proc] = procs.start()
            assert hook.holding.wait(60), "the receiver never got a second notification"
            proc.send_signal(signal.SIGKILL)  # a crash mid-batch: every claimed row stays leased
            proc.wait(timeout=30)
            killed_at = datetime.now(UTC)
            # Short when gone: no row of the dead process stays leased much past its lease.
            latest = max(row[2] for row in _rows(api, sid).values() if row[0] == "delivering")
            assert latest <= killed_at + timedelta(seconds=lease + 1)
            with hook.lock:
                generation["n"] += 1
                generation["seen"] = 0
            hook.release.set()

        procs.start()

        def delivered() -> bool:
            rows = _rows(api, sid)
            return len(rows) == n and all(row[0] == "done" for row in rows.values())

        wait_until(delivered, 90, "every notification delivered")
        rows = _rows(api, sid)
        assert generation["answered_503"]
        assert [number for number, row in rows.items() if row[0] == "dead"] == []
        with hook.lock:
            seen = [x for x in (_number(r) for r in hook.received) if x is not None]
        assert sorted(set(seen)) == list(range(1, n + 1))
        assert {number: row[1] for number, row in rows.items()} == {i: seen.count(i) for i in range(1, n + 1)}
        assert max(seen.count(i) for i in range(1, n + 1)) >= 2  # the held ones were sent again
        assert status(api, sid)["status"] == "active"
    finally:
        procs.stop_all()


@pytest.mark.parametrize("kind", _kinds())
def test_a_hanging_receiver_keeps_its_lease_and_other_subscriptions_flow(
        api: LiveServer, hook: Receiver, tmp_path: Path, kind: str) -> None:
    n, lease = 3, 1.0
    procs = _dispatchers(api, tmp_path, kind, lease)
    try:
        topic(api)
        slow = _activate(api, hook.url + "/slow")
        fast = _activate(api, hook.url + "/fast")

        def hold(item: Received) -> bool:  # the slow endpoint accepts event 1, then answers nothing for a while
            return item.path == "/hook/slow" and _number(item) == 1 and not hook.holding.is_set()

        hook.hold = hold
        procs.start(2)  # two dispatchers polling the same outbox every 0.1 s
        _changes(api, n)
        assert hook.holding.wait(60), "the slow endpoint never got event 1"
        held_at = datetime.now(UTC)

        def numbers(path: str) -> list[int]:
            with hook.lock:
                return [x for x in (_number(r) for r in hook.received if r.path == path) if x is not None]

        # Renewed while in flight: the row's lease keeps moving past four of its own lengths ...
        wait_until(lambda: _rows(api, slow)[1][2] > held_at + timedelta(seconds=4 * lease), 30,
                   "the lease of the row in flight to be renewed")
        # ... while the other subscription is delivered in full, in order, by the same dispatchers.
        wait_until(lambda: numbers("/hook/fast") == list(range(1, n + 1)), 30, "the other subscription's events")
        assert _rows(api, slow)[1][:2] == ("delivering", 1)
        assert numbers("/hook/slow") == [1]  # nobody sent event 1 again, nor event 2 before it
        hook.release.set()

        def done() -> bool:
            rows = _rows(api, slow)
            return len(rows) == n and all(row[0] == "done" for row in rows.values())

        wait_until(done, 60, "the slow subscription's events")
        assert numbers("/hook/slow") == list(range(1, n + 1))  # each once, in order
        assert {number: row[1] for number, row in _rows(api, slow).items()} == {i: 1 for i in range(1, n + 1)}
        assert {number: row[1] for number, row in _rows(api, fast).items()} == {i: 1 for i in range(1, n + 1)}
    finally:
        procs.stop_all()
