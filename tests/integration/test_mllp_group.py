"""Group commit over real sockets: messages waiting together are applied in one transaction, each still
gets its own outcome and ACK; a bad one fails only itself; two messages for one patient never share a group.

A gate holds the first message's transaction open so that the others queue behind it deterministically.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from interfaces.mllp.framing import encode
from interfaces.mllp.group import identities
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.pipeline import Hl7Pipeline, Prepared
from interfaces.mllp.store import ERROR, PROCESSED, MessageStore
from tests.conftest import LiveServer, wait_until
from tests.integration.test_mllp import Running, connect, golden, read_acks, search, segment


class GatedPipeline(Hl7Pipeline):
    """The first message applied alone waits for ``gate`` (holding its group slot) before it runs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.entered = threading.Event()

    def apply(self, p: Prepared) -> str | None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().apply(p)


@pytest.fixture
def gated(api: LiveServer) -> Iterator[tuple[Running, GatedPipeline]]:
    pipeline = GatedPipeline(api.fhir, MessageStore(api.backend.engine))
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0, pipeline=pipeline, group_slots=1))
    yield running, pipeline
    pipeline.gate.set()
    running.stop()


def adt(control: str, mrn: str) -> bytes:
    template = golden("ADT_A04/register_outpatient.hl7").decode()
    return template.replace("ADT-0004", control).replace("ADT-100^", f"{mrn}^") \
        .replace("VIS-9001", f"V-{control}").encode()


def send(port: int, message: bytes) -> str:
    with connect(port) as sock:
        sock.sendall(encode(message))
        [ack] = read_acks(sock, 1)
        return ack


def queue_behind_the_gate(running: Running, pipeline: GatedPipeline,
                          messages: list[bytes]) -> list[str]:
    committer = running.listener.committer
    with ThreadPoolExecutor(len(messages) + 1) as pool:
        first = pool.submit(send, running.port, adt("G-0", "GP-0"))
        wait_until(pipeline.entered.is_set, 30, "the first message to hold the only group slot")
        rest: list[Future[str]] = [pool.submit(send, running.port, m) for m in messages]
        wait_until(lambda: len(committer.pending) == len(messages), 30, "the others to queue")
        pipeline.gate.set()
        return [first.result(60), *(f.result(60) for f in rest)]


def test_messages_waiting_together_commit_as_one_group(api: LiveServer,
                                                       gated: tuple[Running, GatedPipeline]) -> None:
    running, pipeline = gated
    # G-5 is a second message for G-1's patient, unknown until then: in one group both would create it.
    messages = [*(adt(f"G-{n}", f"GP-{n}") for n in range(1, 5)), adt("G-5", "GP-1")]
    acks = queue_behind_the_gate(running, pipeline, messages)
    assert [segment(a, "MSA")[1:3] for a in acks] == [["AA", f"G-{n}"] for n in range(6)]
    assert search(api, "Patient?identifier=GP-1&_summary=count")["total"] == 1
    assert search(api, "Patient?_summary=count")["total"] == 5
    committer = running.listener.committer
    assert (committer.groups, committer.messages) == (3, 6)  # the first alone, four together, then G-5
    store = MessageStore(api.backend.engine)
    for n in range(5):  # each row records its own outcome and only the resources its message wrote
        row = store.find("HIS|HOSP", f"G-{n}")
        assert row is not None and row.status == PROCESSED and row.acks == [acks[n]]
        [patient] = [r for r in row.resources or [] if r.startswith("Patient/")]
        found = search(api, f"Patient?identifier=GP-{n}")["entry"][0]["resource"]
        assert patient == f"Patient/{found['id']}"


def test_a_bad_message_fails_alone_and_one_patient_is_never_created_twice(
        api: LiveServer, gated: tuple[Running, GatedPipeline]) -> None:
    running, pipeline = gated
    bad = golden("ORU_R01/lab_panel_all_value_types.hl7").replace(
        b"OBX|12|NM|1751-7^Albumin^LN", b"OBX|12|NM|1751  7^Albumin^LN").replace(b"|AL|NE|", b"|||")
    messages = [adt("G-1", "GP-1"), bad, adt("G-2", "GP-2"), adt("G-3", "GP-1")]
    acks = queue_behind_the_gate(running, pipeline, messages)
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA", "AE", "AA", "AA"]
    assert segment(acks[2], "ERR")[2] == "OBX^12"
    assert search(api, "Patient?identifier=GP-1&_summary=count")["total"] == 1
    assert search(api, "Patient?_summary=count")["total"] == 3
    for resource_type in ("Observation", "DiagnosticReport"):  # nothing of the bad ORU
        assert search(api, f"{resource_type}?_summary=count")["total"] == 0
    assert MessageStore(api.backend.engine).counts() == {PROCESSED: 4, ERROR: 1}
    # the first alone; G-1, the bad one and G-2 (failed, so each again alone); G-3 after G-1
    assert (running.listener.committer.groups, running.listener.committer.messages) == (3, 5)


def test_identities_name_what_a_message_touches(api: LiveServer) -> None:
    pipeline = Hl7Pipeline(api.fhir, MessageStore(api.backend.engine))
    one, other, same_patient = (pipeline.prepare(pipeline.accept(m)) for m in
                                (adt("I-1", "IP-1"), adt("I-2", "IP-2"), adt("I-3", "IP-1")))
    assert isinstance(one, Prepared) and isinstance(other, Prepared) and isinstance(same_patient, Prepared)
    assert not identities(one) & identities(other)
    assert any("IP-1" in key for key in identities(one) & identities(same_patient))


def test_a_group_looks_up_a_shared_doctor_and_ward_once(api: LiveServer) -> None:
    """Two patients admitted to one ward by one doctor share a group: the ward and the doctor are found or
    created once (the second message refers to the first one's entry), and each message records its own."""
    from interfaces.mllp.group import apply_group, lookups

    pipeline = Hl7Pipeline(api.fhir, MessageStore(api.backend.engine))
    one, other = (pipeline.prepare(pipeline.accept(m)) for m in (adt("L-1", "LP-1"), adt("L-2", "LP-2")))
    assert isinstance(one, Prepared) and isinstance(other, Prepared)
    assert lookups(one) & lookups(other) and not identities(one) & identities(other)
    assert [segment(a or "", "MSA")[1] for a in apply_group(pipeline, [one, other])] == ["AA", "AA"]
    assert search(api, "Location?_summary=count")["total"] == 1
    assert search(api, "Practitioner?_summary=count")["total"] == 1
    encounters = [e["resource"] for e in search(api, "Encounter")["entry"]]
    assert len({e["location"][0]["location"]["reference"] for e in encounters}) == 1
    assert MessageStore(api.backend.engine).counts() == {PROCESSED: 2}
