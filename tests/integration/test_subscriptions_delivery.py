"""Every notification reaches the receiver exactly once per event (after the receiver drops repeats by
event number), although the `fhir-server worker` delivering them is killed with SIGKILL mid-delivery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select

from fhir_server.storage.models import OUTBOX
from tests.conftest import PROCESS_START_TIMEOUT, LiveServer, wait_until
from tests.integration.subscription_receiver import Received, Receiver, start_receiver
from tests.integration.test_subscriptions import observation, status
from tests.integration.test_subscriptions_backport import backport, event_numbers, params, topic
from tests.integration.worker_support import redis_url

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    def __init__(self, api: LiveServer, logs: Path) -> None:
        self.logs = logs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        self.env.update({"FHIR_DATABASE_URL": api.backend.settings.database_url, "FHIR_BROKER_URL": redis_url(),
                         "FHIR_BROKER_QUEUE": f"fhir-test-{uuid.uuid4().hex[:8]}", "FHIR_JOB_POLL_SECONDS": "0.2",
                         "FHIR_OUTBOX_LEASE_SECONDS": "3", "FHIR_TERMINOLOGY_PRELOAD": "false",
                         "FHIR_BINARY_STORE_URL": api.backend.settings.binary_store_url, "FHIR_DB_POOL_SIZE": "5"})
        self.procs: list[tuple[subprocess.Popen[bytes], IO[bytes], Path]] = []

    def start(self) -> subprocess.Popen[bytes]:
        path = self.logs / f"worker-{len(self.procs)}.log"
        log = path.open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "worker", "--concurrency", "2"],
                                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((proc, log, path))
        wait_until(lambda: b"ready." in path.read_bytes() or proc.poll() is not None,
                   PROCESS_START_TIMEOUT, "the worker to start")
        assert proc.poll() is None, path.read_bytes().decode()[-3000:]
        return proc

    def stop_all(self) -> None:
        for proc, log, _path in self.procs:
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


@pytest.fixture
def workers(api: LiveServer, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(api, tmp_path)
    yield group
    group.stop_all()


def _number(item: Received) -> int | None:
    if not item.body:
        return None
    bundle = item.json()
    numbers = event_numbers(bundle) if params(bundle)["type"] == ["event-notification"] else []
    return numbers[0] if numbers else None


def _unfinished(api: LiveServer) -> int:
    with api.backend.engine.connect() as conn:
        return len(conn.execute(select(OUTBOX.c.pk).where(OUTBOX.c.topic.like("subscription-%"),
                                                          OUTBOX.c.status != "done")).all())


def test_a_worker_killed_mid_delivery_loses_and_duplicates_nothing_after_dedup(
        api: LiveServer, hook: Receiver, workers: Workers) -> None:
    n, held = 8, 3
    seen_held: list[Received] = []

    def hold(item: Received) -> bool:
        if _number(item) == held and not seen_held:
            seen_held.append(item)
            return True  # the first delivery of event 3 hangs until the worker is dead
        return False

    hook.hold = hold
    topic(api)
    sid = backport(api, hook.url, content="id-only").json()["id"]
    first = workers.start()
    wait_until(lambda: status(api, sid)["status"] == "active", 30, "the handshake through the worker")
    made = [observation(api, "1-1", "X")["id"] for _ in range(n)]
    assert hook.holding.wait(30), "the receiver never got event 3"
    first.send_signal(signal.SIGKILL)  # a crash, mid-delivery: no clean shutdown, rows stay leased
    first.wait(timeout=30)
    hook.release.set()
    workers.start()

    def numbers() -> list[int]:
        with hook.lock:
            return [x for x in (_number(r) for r in hook.received) if x is not None]

    wait_until(lambda: set(numbers()) >= set(range(1, n + 1)) and _unfinished(api) == 0, 60,
               "every event delivered by the second worker")
    got = numbers()
    assert got.count(held) >= 2  # delivered again after the crash (at least once) ...
    assert sorted(set(got)) == list(range(1, n + 1))  # ... and, by event number, no gap and nothing extra
    focus = {}
    for item in hook.received:
        number = _number(item)
        if number is not None:
            focus.setdefault(number, set()).add(item.json()["entry"][1]["fullUrl"].rsplit("/", 1)[-1])
    assert [focus[i] for i in range(1, n + 1)] == [{rid} for rid in made]  # event i is the i-th change
    assert status(api, sid)["status"] == "active"
