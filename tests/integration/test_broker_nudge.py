"""Writes never wait on the broker (issue 21 item 2): with FHIR_BROKER_URL pointing at a Redis that is
frozen (SIGSTOP) or gone (a closed port), every write still answers at once, and the notification it
queued reaches the receiver once the broker is back (the workers' poll, or the next nudge).

Each test runs a Redis of its own on a free port, so freezing it never touches the shared one."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, _free_port, make_backend, wait_until
from tests.integration.subscription_receiver import Receiver, start_receiver
from tests.integration.worker_support import Stack, make_stack

LOINC = "http://loinc.org"
# Before the fix a frozen broker held each write for the whole freeze (the rest of the test): every write
# would be far over these. The typical write must be quick; one slowed by a busy machine may not.
WRITE_BOUND = 1.0  # seconds, the median write
WRITE_CEILING = 10.0  # seconds, any write


class OwnRedis:
    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed (scripts/redis.sh installs it)")
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, "redis-server to start")

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_own(tmp_path: Path) -> Iterator[OwnRedis]:
    own = OwnRedis(tmp_path)
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def stack(backend: Backend, redis_own: OwnRedis, tmp_path_factory: pytest.TempPathFactory,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv("FHIR_TEST_REDIS_URL", redis_own.url)
    tmp = tmp_path_factory.mktemp(f"nudge-{backend.name}")
    for private in make_backend(backend.name, tmp):  # a database of its own: no other test's subscriptions
        yield from make_stack(private, tmp)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = start_receiver()
    yield receiver
    receiver.close()


def _active_subscription(stack: Stack, hook: Receiver, code: str) -> str:
    body = {"resourceType": "Subscription", "status": "requested", "reason": "lab results",
            "criteria": f"Observation?code={LOINC}|{code}",
            "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/fhir+json"}}
    response = stack.http.post("Subscription", json=body)
    assert response.status_code == 201, response.text
    sid = str(response.json()["id"])
    wait_until(lambda: stack.http.get(f"Subscription/{sid}").json()["status"] == "active", 30, "the handshake")
    assert stack.http.put("Patient/p1", json={"resourceType": "Patient", "id": "p1"}).status_code in (200, 201)
    return sid


def _timed_write(stack: Stack, code: str) -> tuple[float, dict[str, Any]]:
    body = {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]}}
    started = time.monotonic()
    response = stack.http.post("Observation", json=body)
    took = time.monotonic() - started
    assert response.status_code == 201, response.text
    return took, dict(response.json())


def _delivered(hook: Receiver, rid: str) -> bool:
    return any(b.get("id") == rid for b in hook.bodies())


def test_a_frozen_broker_does_not_hold_writes_and_the_notification_follows(
        stack: Stack, redis_own: OwnRedis, hook: Receiver) -> None:
    stack.start_worker()
    _active_subscription(stack, hook, "1234-5")
    assert redis_own.proc is not None
    redis_own.proc.send_signal(signal.SIGSTOP)
    try:
        durations = []
        written = []
        for _ in range(5):
            took, obs = _timed_write(stack, "1234-5")
            durations.append(took)
            written.append(obs["id"])
        assert sorted(durations)[len(durations) // 2] < WRITE_BOUND and max(durations) < WRITE_CEILING, durations
    finally:
        redis_own.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: all(_delivered(hook, rid) for rid in written), 60, "the notifications after the thaw")


def test_a_closed_broker_port_does_not_slow_writes_and_the_notification_follows(
        stack: Stack, redis_own: OwnRedis, hook: Receiver) -> None:
    stack.start_worker()
    _active_subscription(stack, hook, "2345-6")
    redis_own.stop()  # the port is closed: connections are refused
    try:
        durations = []
        written = []
        for _ in range(5):
            took, obs = _timed_write(stack, "2345-6")
            durations.append(took)
            written.append(obs["id"])
        assert sorted(durations)[len(durations) // 2] < WRITE_BOUND and max(durations) < WRITE_CEILING, durations
    finally:
        redis_own.start()  # the broker comes back on the same port
    wait_until(lambda: all(_delivered(hook, rid) for rid in written), 60, "the notifications once the broker is back")
