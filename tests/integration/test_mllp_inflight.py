"""A message re-sent while its first copy is still being processed (same sender + MSH-10, another
connection) is processed once; the copy waits and answers the first's ACK. Real sockets on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from interfaces.mllp.framing import encode
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.pipeline import Accepted, Hl7Pipeline
from interfaces.mllp.store import PROCESSED, MessageStore
from tests.conftest import LiveServer, wait_until
from tests.integration.test_mllp import Running, connect, golden, read_acks, search, segment

MESSAGE = golden("ORU_R01/python_hl7_glucose_sn.hl7")  # original mode (no MSH-15/16), control id CNTRL-3456


class Gate:
    """Wraps the mapper so the first mapping blocks until opened: the message stays in flight."""

    def __init__(self, pipeline: Hl7Pipeline) -> None:
        self.open = threading.Event()
        self.calls = 0
        self._map = pipeline.mapper.map
        pipeline.mapper.map = self.map  # type: ignore[method-assign,assignment]

    def map(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            assert self.open.wait(30), "the test never opened the gate"
        return self._map(*args)


class CountingWaits:
    def __init__(self, pipeline: Hl7Pipeline) -> None:
        self.count = 0
        self._wait = pipeline.wait_for_original
        pipeline.wait_for_original = self.wait  # type: ignore[method-assign]

    def wait(self, acc: Accepted, text: str) -> Accepted:
        self.count += 1
        return self._wait(acc, text)


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def send(sock: socket.socket, message: bytes) -> None:
    sock.sendall(encode(message))


def observation_versions(api: LiveServer) -> list[str]:
    return [e["resource"]["meta"]["versionId"] for e in search(api, "Observation").get("entry", [])]


def test_a_copy_resent_while_the_first_is_in_flight_gets_the_same_ack(api: LiveServer, mllp: Running) -> None:
    pipeline = mllp.listener.pipeline
    gate, waits = Gate(pipeline), CountingWaits(pipeline)
    with connect(mllp.port) as first, connect(mllp.port) as second:
        send(first, MESSAGE)
        wait_until(lambda: gate.calls == 1, 30, "the first copy to be mapping")
        send(second, MESSAGE)
        wait_until(lambda: waits.count == 1, 30, "the second copy to wait for the first")
        assert gate.calls == 1  # the copy is not mapped while the first is in flight
        gate.open.set()
        [ack1] = read_acks(first, 1)
        [ack2] = read_acks(second, 1)
    assert segment(ack1, "MSA")[1:3] == ["AA", "CNTRL-3456"]
    assert ack2 == ack1  # the first copy's ACK, byte for byte
    assert gate.calls == 1  # mapped and applied once
    [row] = MessageStore(api.backend.engine).with_status(PROCESSED)
    assert row.attempts == 1 and row.acks == [ack1]
    assert observation_versions(api) == ["1", "1"]  # no second version of anything
    assert search(api, "Patient?_summary=count")["total"] == 1


def test_a_copy_that_waits_too_long_is_told_and_the_first_still_answers(api: LiveServer, mllp: Running) -> None:
    pipeline = mllp.listener.pipeline
    pipeline.inflight_wait = 0.2
    gate = Gate(pipeline)
    with connect(mllp.port) as first, connect(mllp.port) as second:
        send(first, MESSAGE)
        wait_until(lambda: gate.calls == 1, 30, "the first copy to be mapping")
        send(second, MESSAGE)
        [told] = read_acks(second, 1)
        assert segment(told, "MSA")[1:3] == ["AE", "CNTRL-3456"]
        assert "still being processed" in told
        assert segment(told, "ERR")[1].startswith("MSH^1^10")  # 2.4: ERR-1 (ELD) names MSH-10
        gate.open.set()
        [ack1] = read_acks(first, 1)
        assert segment(ack1, "MSA")[1] == "AA"
        send(second, MESSAGE)  # re-sent once more, after the first finished: the stored outcome
        [again] = read_acks(second, 1)
    assert again == ack1 and gate.calls == 1
    assert observation_versions(api) == ["1", "1"]


def test_concurrent_copies_on_many_connections_are_processed_once(api: LiveServer, mllp: Running) -> None:
    gate = Gate(mllp.listener.pipeline)
    gate.open.set()

    def one(_n: int) -> str:
        with connect(mllp.port) as sock:
            send(sock, MESSAGE)
            return read_acks(sock, 1)[0]

    with ThreadPoolExecutor(6) as pool:
        acks = list(pool.map(one, range(6)))
    assert len(set(acks)) == 1 and segment(acks[0], "MSA")[1] == "AA"
    assert gate.calls == 1
    assert observation_versions(api) == ["1", "1"]


def test_two_listeners_one_outcome(api: LiveServer) -> None:
    """Two processes (each its own in-flight registry) get the same message: the second to finish finds
    the first's outcome recorded, rolls its transaction back and answers the first's ACK."""
    store = MessageStore(api.backend.engine)
    slow, fast = Hl7Pipeline(api.fhir, store), Hl7Pipeline(api.fhir, store)
    gate = Gate(slow)
    with ThreadPoolExecutor(1) as pool:
        slow_acks = pool.submit(slow.handle, MESSAGE)
        wait_until(lambda: gate.calls == 1, 30, "the slow copy to be mapping")
        [fast_ack] = fast.handle(MESSAGE)  # the row exists without an outcome: this process applies it
        gate.open.set()
        [slow_ack] = slow_acks.result(60)
    assert segment(fast_ack, "MSA")[1] == "AA" and slow_ack == fast_ack
    [row] = store.with_status(PROCESSED)
    assert row.attempts == 1 and row.acks == [fast_ack]
    assert observation_versions(api) == ["1", "1"]  # the slow copy's versions were rolled back


def test_enhanced_mode_copy_gets_what_the_first_was_sent(api: LiveServer, mllp: Running) -> None:
    message = golden("ORU_R01/lab_panel_all_value_types.hl7").replace(b"|AL|NE|", b"|AL|AL|")  # CA, then AA
    pipeline = mllp.listener.pipeline
    gate, waits = Gate(pipeline), CountingWaits(pipeline)
    with connect(mllp.port) as first, connect(mllp.port) as second:
        send(first, message)
        [accept] = read_acks(first, 1)  # the accept ACK leaves once the raw message is committed
        assert segment(accept, "MSA")[1:3] == ["CA", "LAB-0001"]
        wait_until(lambda: gate.calls == 1, 30, "the first copy to be mapping")
        send(second, message)
        wait_until(lambda: waits.count == 1, 30, "the second copy to wait for the first")
        gate.open.set()
        [application] = read_acks(first, 1)
        assert segment(application, "MSA")[1] == "AA"
        assert read_acks(second, 2) == [accept, application]
    assert gate.calls == 1
