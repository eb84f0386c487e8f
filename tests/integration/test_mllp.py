"""The MLLP listener over real loopback sockets, against the live FHIR server of each backend."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fhir_server.rest.request import FhirRequest
from interfaces.mllp.framing import MllpDecoder, encode
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.pipeline import Hl7Pipeline
from interfaces.mllp.store import ERROR, PROCESSED, REJECTED, MessageStore
from tests.conftest import SYSTEM, TENANT_BACKENDS, LiveServer, wait_until

# Also in a non-default tenant: a listener of its own (fhir-server --tenant T mllp), its schema (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hl7v2"


class Running:
    def __init__(self, listener: MllpListener) -> None:
        self.listener = listener
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(listener.start(), self.loop).result(30)
        self.port = listener.bound_port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_acks(sock: socket.socket, count: int) -> list[str]:
    decoder, acks = MllpDecoder(), []
    while len(acks) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(acks)} of {count} ACKs"
        acks += [f.decode() for f in decoder.feed(chunk) if isinstance(f, bytes)]
    return acks


def exchange(port: int, *messages: bytes) -> list[str]:
    with connect(port) as sock:
        sock.sendall(b"".join(encode(m) for m in messages))
        return read_acks(sock, len(messages))


def segment(ack: str, seg_id: str) -> list[str]:
    sep = ack[3] if ack.startswith("MSH") and len(ack) > 3 else "|"  # the ACK uses the message's delimiters
    for seg in ack.split("\r"):
        if seg.startswith(seg_id + sep):
            return seg.split(sep)
    raise AssertionError(f"no {seg_id} in {ack!r}")


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def search(api: LiveServer, query: str) -> dict[str, Any]:
    response = api.http.get(query)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_oru_becomes_resources_and_a_resend_creates_nothing(api: LiveServer, mllp: Running) -> None:
    message = golden("ORU_R01/lab_panel_all_value_types.hl7")
    [ack] = exchange(mllp.port, message)
    # MSH-15 AL / MSH-16 NE: enhanced mode, one accept ACK (after the commit) and no application ACK.
    assert segment(ack, "MSA")[1:3] == ["CA", "LAB-0001"]
    wait_until(lambda: MessageStore(api.backend.engine).counts().get(PROCESSED) == 1, 30, "processing")
    assert search(api, "Observation?_summary=count")["total"] == 12
    report = search(api, "DiagnosticReport")["entry"][0]["resource"]
    assert report["status"] == "final" and len(report["result"]) == 12
    patient = search(api, "Patient?identifier=MRN12345")["entry"][0]["resource"]
    assert patient["name"][0]["given"][0] == "Priyā"
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    obs = search(api, "Observation?code=http://loinc.org|2345-7")["entry"][0]["resource"]
    assert obs["valueQuantity"]["code"] == "mg/dL" and obs["meta"]["versionId"] == "1"
    prov = search(api, "Provenance")["entry"][0]["resource"]
    assert len(prov["target"]) == 17  # with the ordering provider (OBR-16) as a Practitioner

    [again] = exchange(mllp.port, message)
    assert again == ack  # the stored original ACK, byte for byte
    assert search(api, "Observation?_summary=count")["total"] == 12
    assert api.http.get(f"Observation/{obs['id']}").json()["meta"]["versionId"] == "1"


def test_correction_updates_the_same_observation(api: LiveServer, mllp: Running) -> None:
    corrected = golden("ORU_R01/v23_latin1_correction.hl7")
    final = corrected.replace(b"|LAB-0002|", b"|LAB-0001|").replace(b"||||C|||", b"||||F|||") \
        .replace(b"|13.9|", b"|12.9|")
    acks = exchange(mllp.port, final, corrected)
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA"]
    bundle = search(api, "Observation")
    assert bundle["total"] == 1
    obs = bundle["entry"][0]["resource"]
    assert obs["status"] == "corrected" and obs["valueQuantity"]["value"] == 13.9 and obs["meta"]["versionId"] == "2"
    assert search(api, "Patient")["entry"][0]["resource"]["name"][0]["family"] == "Müller"


def test_content_error_is_ae_with_err_and_writes_nothing(api: LiveServer, mllp: Running) -> None:
    [ack] = exchange(mllp.port, golden("errors/python_hl7_bad_birth_date.hl7"))
    assert segment(ack, "MSA")[1:3] == ["AE", "CNTRL-3456"]
    assert segment(ack, "ERR")[1] == "PID^1^7^102&Data type error&HL70357"  # 2.4: ERR-1 (ELD)
    assert search(api, "Patient?_summary=count")["total"] == 0
    [row] = MessageStore(api.backend.engine).with_status(ERROR)
    assert row.error == "PID[1]-7: '196203520' is not a valid date" and "CNTRL-3456" in row.raw

    # Text lines without an observation id (OBX-3 empty) are the report's text, not refused observations.
    [ack] = exchange(mllp.port, golden("ORU_R01/lfh_oru_text_lines_without_code.hl7"))
    assert segment(ack, "MSA")[1] == "AA"
    assert search(api, "Observation?_summary=count")["total"] == 0
    [report] = [e["resource"] for e in search(api, "DiagnosticReport")["entry"]]
    assert "Emergency Department" in base64.b64decode(report["presentedForm"][0]["data"]).decode()


def test_rejections_are_ar(api: LiveServer, mllp: Running) -> None:
    with connect(mllp.port) as sock:  # enhanced mode (MSH-16 AL): a commit reject, then the application AR
        sock.sendall(encode(golden("rejected/hl7apy_zdt_z01.hl7")))
        z, _ = read_acks(sock, 2)
        sock.sendall(encode(golden("rejected/hl7apy_duplicate_encoding_chars.hl7")))
        _, bad = read_acks(sock, 2)
    [noise] = exchange(mllp.port, b"hello, not HL7")
    assert segment(z, "MSA")[1] == "CR"
    assert segment(z, "ERR")[2:4] == ["MSH^1^9^1^1", "200^Unsupported message type^HL70357"]
    assert segment(bad, "MSA")[1] == "AR"
    assert segment(noise, "MSA")[1] == "AR"
    old = b"MSH|^~\\&|A|B|||20240101||ADT^A01|V20|P|2.0\rPID|1||1^^^H^MR"
    [ack] = exchange(mllp.port, old)
    assert segment(ack, "MSA")[1] == "AR"
    assert segment(ack, "ERR")[2:4] == ["MSH^1^12^1^1", "203^Unsupported version id^HL70357"]
    counts = MessageStore(api.backend.engine).counts()
    assert counts == {REJECTED: 4}  # every message is accounted for, even unreadable ones
    assert search(api, "Patient?_summary=count")["total"] == 0


def test_framing_split_across_packets_and_batched_in_one(api: LiveServer, mllp: Running) -> None:
    a04 = golden("ADT_A04/register_outpatient.hl7")
    a08 = golden("ADT_A08/update_patient.hl7")
    stream = b"\r\n" + encode(a04) + encode(a08)
    with connect(mllp.port) as sock:
        for i in range(0, len(stream), 7):  # 7-byte packets: every frame boundary falls mid-packet somewhere
            sock.sendall(stream[i:i + 7])
        acks = read_acks(sock, 2)
    assert [segment(a, "MSA")[1:3] for a in acks] == [["AA", "ADT-0004"], ["AA", "ADT-0008"]]
    patient = search(api, "Patient?identifier=ADT-100")["entry"][0]["resource"]
    assert patient["name"][0]["given"] == ["Chidi", "Emeka"] and patient["meta"]["versionId"] == "2"
    enc = search(api, "Encounter")["entry"][0]["resource"]
    assert enc["status"] == "finished" and enc["period"]["end"] == "2024-03-01T11:30:00+01:00"


def test_many_concurrent_senders(api: LiveServer, mllp: Running) -> None:
    template = golden("ADT_A04/register_outpatient.hl7").decode()

    def sender(n: int) -> list[str]:
        messages = [template.replace("ADT-0004", f"C{n}-{i}").replace("ADT-100^", f"P{n}-{i}^")
                    .replace("VIS-9001", f"V{n}-{i}").encode() for i in range(5)]
        with connect(mllp.port) as sock:
            acks = []
            for m in messages:  # one at a time, as a real sender waits for each ACK
                sock.sendall(encode(m))
                acks += read_acks(sock, 1)
            return acks

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(sender, range(20)))
    assert all(segment(a, "MSA")[1] == "AA" for acks in results for a in acks)
    assert search(api, "Patient?_summary=count")["total"] == 100
    assert search(api, "Encounter?_summary=count")["total"] == 100
    assert MessageStore(api.backend.engine).counts() == {PROCESSED: 100}


def test_stored_before_ack_when_mapping_fails_then_replayed(api: LiveServer, mllp: Running,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = mllp.listener.pipeline

    def broken(*_args: Any) -> Any:
        raise RuntimeError("mapping bug")

    monkeypatch.setattr(pipeline.mapper, "map", broken)
    [ack] = exchange(mllp.port, golden("ADT_A01/odd_delimiters.hl7"))
    assert segment(ack, "MSA")[1] == "AE" and "207&Application internal error" in segment(ack, "ERR")[1]
    store = MessageStore(api.backend.engine)
    [row] = store.with_status(ERROR)
    assert "O'Brien" in row.raw
    monkeypatch.undo()  # "the fix"
    assert pipeline.replay(ERROR) == {PROCESSED: 1}
    assert search(api, "Patient?identifier=A-1")["total"] == 1
    fixed = store.get(row.pk)
    assert fixed is not None and fixed.status == PROCESSED and fixed.attempts == 2
    assert any(r.startswith("Patient/") for r in fixed.resources or [])
    # A re-send now gets the ACK of the successful replay.
    [again] = exchange(mllp.port, golden("ADT_A01/odd_delimiters.hl7"))
    assert segment(again, "MSA")[1] == "AA"


def test_enhanced_mode_sends_accept_then_application_ack(api: LiveServer, mllp: Running) -> None:
    message = golden("ADT_A01/hl7apy_validation_01.hl7")  # MSH-15 AL, MSH-16 empty (= AL)
    acks = exchange_n(mllp.port, message, 2)
    assert [segment(a, "MSA")[1] for a in acks] == ["CA", "AA"]
    assert exchange_n(mllp.port, message, 2) == acks  # a re-send: both original ACKs again


def exchange_n(port: int, message: bytes, count: int) -> list[str]:
    with connect(port) as sock:
        sock.sendall(encode(message))
        return read_acks(sock, count)


def test_merge_a40_links_the_two_patients(api: LiveServer, mllp: Running) -> None:
    prior = golden("ADT_A04/register_outpatient.hl7").replace(b"ADT-100^", b"ADT-099^").replace(b"ADT-0004",
                                                                                               b"ADT-0003")
    acks = exchange(mllp.port, prior, golden("ADT_A04/register_outpatient.hl7"), golden("ADT_A40/merge.hl7"))
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA", "AA"]
    old = search(api, "Patient?identifier=ADT-099")["entry"][0]["resource"]
    new = search(api, "Patient?identifier=ADT-100")["entry"][0]["resource"]
    assert old["active"] is False and old["link"] == [{"other": {"reference": f"Patient/{new['id']}"},
                                                        "type": "replaced-by"}]
    assert new["link"][0]["type"] == "replaces" and new["link"][0]["other"]["reference"] == f"Patient/{old['id']}"


def test_size_limit_and_idle_timeout(api: LiveServer) -> None:
    settings = api.backend.settings.model_copy(update={"mllp_max_message_bytes": 2000,
                                                       "mllp_idle_timeout_seconds": 0.5})
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0, settings=settings))
    try:
        big = golden("ADT_A04/register_outpatient.hl7") + b"ZPI|" + b"x" * 5000 + b"\r"
        [ack] = exchange(running.port, big)
        assert segment(ack, "MSA")[1:3] == ["AR", "ADT-0004"] and "exceeds the limit" in ack
        with connect(running.port) as sock:
            sock.settimeout(10)
            assert sock.recv(10) == b""  # closed by the server after the idle timeout
    finally:
        running.stop()


def test_pipeline_handles_without_sockets(api: LiveServer) -> None:
    pipeline = Hl7Pipeline(api.fhir, MessageStore(api.backend.engine))
    [ack] = pipeline.handle(golden("ORM_O01/new_order.hl7"))
    assert segment(ack, "MSA")[1] == "AA"
    sr = api.fhir.handle(FhirRequest("GET", "ServiceRequest", access=SYSTEM)).resource
    assert sr is not None and sr["entry"][0]["resource"]["priority"] == "stat"


def test_a_restart_applies_messages_accepted_but_not_processed(api: LiveServer) -> None:
    # The state a listener killed right after its accept ACK leaves behind: stored, committed, unprocessed.
    pipeline = Hl7Pipeline(api.fhir, MessageStore(api.backend.engine))
    accepted = pipeline.accept(golden("ORU_R01/lab_panel_all_value_types.hl7"))
    assert [segment(a, "MSA")[1] for a in accepted.immediate] == ["CA"]
    assert search(api, "Observation?_summary=count")["total"] == 0
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))  # start() recovers first
    try:
        assert MessageStore(api.backend.engine).counts() == {PROCESSED: 1}
        assert search(api, "Observation?_summary=count")["total"] == 12
    finally:
        running.stop()


MAPPED = sorted(p for p in GOLDEN.glob("*/*.hl7") if p.parent.name not in ("errors", "rejected"))


def test_every_golden_message_is_accepted_by_the_server(api: LiveServer, mllp: Running) -> None:
    """The golden bundles validate offline; here the real transaction path takes each one (AA or CA)."""
    with connect(mllp.port) as sock:
        for path in MAPPED:
            sock.sendall(encode(path.read_bytes()))
            ack = read_acks(sock, 1)[0]
            assert segment(ack, "MSA")[1] in ("AA", "CA"), (path.name, ack)
            if segment(ack, "MSA")[1] == "CA":  # enhanced mode: the application ACK follows if asked for
                msh = path.read_bytes().split(b"\r")[0]
                msh16 = msh.split(msh[3:4])[15:16]
                if msh16 in ([b""], [b"AL"], []):
                    assert segment(read_acks(sock, 1)[0], "MSA")[1] == "AA", path.name
    store = MessageStore(api.backend.engine)
    wait_until(lambda: set(store.counts()) == {PROCESSED}, 30, "every message processed")
    assert store.counts()[PROCESSED] == len(MAPPED)
    appointment = search(api, "Appointment")["entry"][0]["resource"]  # S12 then S15: one Appointment
    assert appointment["status"] == "cancelled" and appointment["meta"]["versionId"] == "2"
    assert search(api, "Immunization?_summary=count")["total"] == 2
    assert search(api, "ChargeItem?_summary=count")["total"] == 2
    docs = search(api, "DocumentReference")["entry"]
    assert {d["resource"]["content"][0]["attachment"]["contentType"] for d in docs} == \
        {"application/pdf", "text/plain; charset=utf-8"}


def test_the_ack_leaves_only_after_the_commit(api: LiveServer, mllp: Running) -> None:
    """Original mode: when an ACK arrives, its row is committed with that very ACK and the resources exist."""
    store = MessageStore(api.backend.engine)
    template = golden("ADT_A04/register_outpatient.hl7").decode()
    with connect(mllp.port) as sock:
        for i in range(10):
            sock.sendall(encode(template.replace("ADT-0004", f"T-{i}").replace("ADT-100^", f"TP-{i}^").encode()))
            [ack] = read_acks(sock, 1)
            row = store.find("HIS|HOSP", f"T-{i}")  # read at once: no waiting, no retry
            assert row is not None and row.status == PROCESSED and row.acks == [ack]
            assert search(api, f"Patient?identifier=TP-{i}")["total"] == 1


def test_a_failed_transaction_writes_nothing(api: LiveServer, mllp: Running) -> None:
    # The last OBX carries a code the server's validation refuses (two spaces inside a FHIR code):
    # the whole message is one transaction, so not even the Patient or the first results are written.
    message = golden("ORU_R01/lab_panel_all_value_types.hl7").replace(
        b"OBX|12|NM|1751-7^Albumin^LN", b"OBX|12|NM|1751  7^Albumin^LN").replace(b"|AL|NE|", b"|||")
    [ack] = exchange(mllp.port, message)
    assert segment(ack, "MSA")[1] == "AE"
    assert segment(ack, "ERR")[2] == "OBX^12" and segment(ack, "ERR")[3].startswith("207^")
    assert "code" in segment(ack, "ERR")[8]
    for resource_type in ("Patient", "Observation", "DiagnosticReport", "ServiceRequest", "Provenance"):
        assert search(api, f"{resource_type}?_summary=count")["total"] == 0, resource_type
    [row] = MessageStore(api.backend.engine).with_status(ERROR)
    assert row.error and "OBX[12]" in row.error


BATCHES = GOLDEN.parent / "hl7v2-batches"


def test_a_batch_in_one_frame_gets_one_batch_of_acks(api: LiveServer, mllp: Running) -> None:
    # Two ADT^A04 with MSH-15/16 NE: stored and applied one by one, and no per-message ACK is asked for.
    [reply] = exchange(mllp.port, (BATCHES / "python_hl7_batch1.hl7").read_bytes())
    segments = reply.rstrip("\r").split("\r")
    assert segments[0].startswith("BHS|^~\\&|") and segments[0].split("|")[11] == "abchs20070101123401-1"
    assert segments[-1] == "BTS|0"
    store = MessageStore(api.backend.engine)
    assert store.counts() == {PROCESSED: 2}
    assert search(api, "Patient?identifier=0000112234")["total"] == 1

    # A file of two batches; its third message repeats the first control id: a duplicate, nothing new.
    template = (BATCHES / "python_hl7_file1.hl7").read_bytes()
    file_with_acks = template.replace(b"|||NE|NE|AU|", b"|||AL|AL|AU|").replace(b"1233445677889", b"9")
    [reply] = exchange(mllp.port, file_with_acks)
    segments = reply.rstrip("\r").split("\r")
    assert segments[0].startswith("FHS|") and segments[1].startswith("BHS|") and segments[-1] == "FTS|1"
    msa = [s.split("|")[1:3] for s in segments if s.startswith("MSA|")]
    assert msa == [["CA", "90"], ["AA", "90"], ["CA", "91"], ["AA", "91"], ["CA", "90"], ["AA", "90"]]
    assert segments[-2] == "BTS|6"
    assert store.counts() == {PROCESSED: 4}
