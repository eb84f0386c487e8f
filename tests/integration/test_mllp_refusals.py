"""What the MLLP adapter refuses (issue 12, items 13 and 16), over real loopback sockets on both databases:
each answer names the field (ERR-2) with a table 0357 code (ERR-3), echoes MSA-2, swaps MSH-3/4 and
MSH-5/6, writes no resource, and leaves the message stored with its error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from interfaces.mllp.framing import encode
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.store import ERROR, PROCESSED, REJECTED, MessageStore, StoredMessage
from tests.conftest import LiveServer
from tests.integration.test_mllp import Running, connect, exchange, read_acks, segment

MSH = "MSH|^~\\&|ANALYZER|CITYLAB|FHIR|HOSP|{ts}||ORU^R01^ORU_R01|{cid}|P|2.5.1{tail}\r"
BODY = ("PID|1||MRN30001^^^HOSP^MR||{name}||19800115|F\r"
        "OBR|1|ORD-91^HIS|FIL-91^CITYLAB|24323-8^Metabolic panel^LN|||20240307083000+0530||||||||||||||||||F\r"
        "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-105|N|||F\r"
        "OBX|2|{vt}|{code}||{value}||||||F\r")


def oru(cid: str, *, vt: str = "ST", value: str = "Pale yellow", name: str = "Nair^Lakshmi",
        ts: str = "20240307091500+0530", tail: str = "", code: str = "5767-9^Appearance of Urine^LN") -> str:
    return MSH.format(ts=ts, cid=cid, tail=tail) + BODY.format(vt=vt, value=value, name=name, code=code)


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def resources(api: LiveServer) -> tuple[int, int]:
    """Current resources and versions ever written (AuditEvents aside: reads by these checks add some)."""
    with api.backend.engine.connect() as conn:
        return (conn.execute(text("SELECT count(*) FROM resource WHERE resource_type <> 'AuditEvent'")).scalar_one(),
                conn.execute(text("SELECT count(*) FROM resource_history "
                                  "WHERE resource_type <> 'AuditEvent'")).scalar_one())


def assert_answered(ack: str, code: str, control_id: str) -> list[str]:
    """MSA-1/2 as expected, sender and receiver swapped; returns the ERR segment's fields."""
    msh = segment(ack, "MSH")
    assert msh[2:6] == ["FHIR", "HOSP", "ANALYZER", "CITYLAB"], msh
    assert segment(ack, "MSA")[1:3] == [code, control_id]
    return segment(ack, "ERR")


def stored(api: LiveServer, sender: str, control_id: str) -> StoredMessage:
    row = MessageStore(api.backend.engine).find(sender, control_id)
    assert row is not None
    return row


@pytest.fixture
def baseline(api: LiveServer, mllp: Running) -> tuple[int, int]:
    """One good message first, so that "nothing written" is measured against a store that has something."""
    [ack] = exchange(mllp.port, oru("GOOD-1").encode())
    assert segment(ack, "MSA")[1] == "AA"
    counts = resources(api)
    assert counts[0] == 6  # Patient, ServiceRequest, DiagnosticReport, 2 Observations, Provenance
    return counts


ERR_TEXT = {"101": "Required field missing", "102": "Data type error", "103": "Table value not found"}
REFUSED = [("CX", "12345^^^HOSP^MR"), ("TN", "(555)555-1234"), ("XPN", "Doe^John"), ("XTN", "^PRN^PH^^^555^1234"),
           ("RP", "doc-1^PACS^application^pdf"), ("CP", "12.50&USD"), ("NA", "1^2^3"), ("MA", "1^2~3^4"),
           ("EI", "LOT-7^MAKER")]


def test_obx_value_types_without_a_mapping_are_ae_at_obx_2(api: LiveServer, mllp: Running,
                                                            baseline: tuple[int, int]) -> None:
    cases = [(f"VT-{vt}", vt, value, "102") for vt, value in REFUSED]
    cases += [("VT-QQ", "QQ", "95", "103"), ("VT-EMPTY", "", "95", "101")]
    acks = exchange(mllp.port, *(oru(cid, vt=vt, value=value).encode() for cid, vt, value, _ in cases))
    for ack, (cid, vt, _value, code) in zip(acks, cases, strict=True):
        err = assert_answered(ack, "AE", cid)
        assert err[2:4] == ["OBX^2^2", f"{code}^{ERR_TEXT[code]}^HL70357"], (vt, err)
        assert (vt or "OBX-2 is required") in err[8]
        row = stored(api, "ANALYZER|CITYLAB", cid)
        assert row.status == ERROR and row.error is not None and row.error.startswith("OBX[2]-2: ")
    assert resources(api) == baseline  # not the Patient, not the first OBX: nothing half-written


def test_newly_mapped_value_types_are_aa_with_their_value(api: LiveServer, mllp: Running) -> None:
    cases = {"NR": ("36.1^37.2", "valueRange", {"low": {"value": 36.1}, "high": {"value": 37.2}}),
             "DR": ("20240301080000+0530^20240305173000+0530", "valuePeriod",
                    {"start": "2024-03-01T08:00:00+05:30", "end": "2024-03-05T17:30:00+05:30"}),
             "VR": ("150^200", "valueString", "150-200"),
             "IS": ("O+", "valueCodeableConcept", {"coding": [{"code": "O+"}]}),
             "SN": ("^2^+", "valueString", "2 +")}
    for i, (vt, (value, element, expected)) in enumerate(cases.items()):
        code = f"9999-{i}^Test {vt}^LN"
        [ack] = exchange(mllp.port, oru(f"NEW-{vt}", vt=vt, value=value, code=code).encode())
        assert segment(ack, "MSA")[1:3] == ["AA", f"NEW-{vt}"]
        found = api.http.get(f"Observation?code=http://loinc.org|9999-{i}").json()
        assert found["entry"][0]["resource"][element] == expected, vt


def test_empty_msh_10_is_ar_and_still_answered_to_its_sender(api: LiveServer, mllp: Running,
                                                              baseline: tuple[int, int]) -> None:
    [ack] = exchange(mllp.port, oru("").encode())
    err = assert_answered(ack, "AR", "")
    assert err[2:4] == ["MSH^1^10", "101^Required field missing^HL70357"]
    [row] = MessageStore(api.backend.engine).with_status(REJECTED)
    assert row.control_id is None and row.error and row.error.startswith("MSH[1]-10: ")
    assert resources(api) == baseline


def test_a_rejection_echoes_msa_2_and_swaps_msh_whenever_msh_parsed(api: LiveServer, mllp: Running,
                                                                     baseline: tuple[int, int]) -> None:
    bad_segment = oru("BAD-SEG-1") + "obx|3|ST|x||y\r"  # MSH parses; the message as a whole does not
    second_msh = oru("BAD-MSH-1") + oru("BAD-MSH-2")
    enhanced = oru("BAD-SEG-2", tail="|||AL|AL") + "zz\r"
    unsupported = oru("OLD-1").replace("|2.5.1\r", "|2.0\r", 1)
    with connect(mllp.port) as sock:
        sock.sendall(b"".join(encode(m.encode()) for m in (bad_segment, second_msh, enhanced, unsupported)))
        acks = read_acks(sock, 5)  # the enhanced one asked for both ACKs (MSH-15/16 AL): CR, then its AR
    for ack, (code, cid) in zip(acks, [("AR", "BAD-SEG-1"), ("AR", "BAD-MSH-1"), ("CR", "BAD-SEG-2"),
                                       ("AR", "BAD-SEG-2"), ("AR", "OLD-1")], strict=True):
        assert_answered(ack, code, cid)
    assert "invalid segment id" in segment(acks[0], "MSA")[3]
    store = MessageStore(api.backend.engine)
    assert store.counts() == {PROCESSED: 1, REJECTED: 4}
    # Stored under its sender but without its control id: a corrected copy under the same id is new.
    assert {(r.sender, r.control_id) for r in store.with_status(REJECTED)} == \
        {("ANALYZER|CITYLAB", None), ("ANALYZER|CITYLAB", "OLD-1")}
    [fixed] = exchange(mllp.port, oru("BAD-SEG-1").encode())
    assert segment(fixed, "MSA")[1:3] == ["AA", "BAD-SEG-1"]
    assert resources(api)[0] == baseline[0] + 1  # its own Provenance; the results are the same resources
    # Not even MSH: the minimal AR, as before.
    [noise] = exchange(mllp.port, b"MSH|^^~\\&|A|B\rPID|1")
    assert segment(noise, "MSA")[1:3] == ["AR", ""]


def test_bytes_invalid_for_the_msh_18_charset_are_ae_at_msh_18(api: LiveServer, mllp: Running,
                                                                baseline: tuple[int, int]) -> None:
    utf8_claimed = oru("CS-1", name="Müller^Jürgen", tail="||||||UNICODE UTF-8").encode("latin-1")
    ascii_claimed = oru("CS-2", name="Müller^Jürgen", tail="||||||ASCII").encode("latin-1")
    honest = oru("CS-3", name="Müller^Jürgen", tail="||||||8859/1").replace("MRN30001", "MRN30002").encode("latin-1")
    acks = exchange(mllp.port, utf8_claimed, ascii_claimed)
    for ack, cid, charset in zip(acks, ["CS-1", "CS-2"], ["UNICODE UTF-8", "ASCII"], strict=True):
        err = assert_answered(ack, "AE", cid)
        assert err[2:4] == ["MSH^1^18", "102^Data type error^HL70357"] and charset in err[8]
        row = stored(api, "ANALYZER|CITYLAB", cid)
        assert row.status == ERROR and row.error and row.error.startswith("MSH[1]-18: byte ")
        assert "Müller" in row.raw  # stored as received (read as Latin-1), for replay after a decision
    assert resources(api) == baseline
    [ok] = exchange(mllp.port, honest)
    assert segment(ok, "MSA")[1] == "AA"
    patient = api.http.get("Patient?identifier=MRN30002").json()["entry"][0]["resource"]
    assert patient["name"][0]["family"] == "Müller"


def test_in_a_batch_each_message_is_checked_by_its_own_msh_18(api: LiveServer, mllp: Running,
                                                               baseline: tuple[int, int]) -> None:
    lying = oru("BCS-1", name="Müller^Jürgen", tail="||||||UNICODE UTF-8")
    honest = oru("BCS-2", name="Müller^Jürgen", tail="||||||8859/1").replace("MRN30001", "MRN30003")
    batch = "BHS|^~\\&|ANALYZER|CITYLAB|FHIR|HOSP|20240307091500||||B-1\r" + lying + honest + "BTS|2\r"
    [reply] = exchange(mllp.port, batch.encode("latin-1"))
    acks = ["MSH" + a for a in reply.split("\rMSH")[1:]]
    assert assert_answered(acks[0], "AE", "BCS-1")[2:4] == ["MSH^1^18", "102^Data type error^HL70357"]
    assert segment(acks[1], "MSA")[1:3] == ["AA", "BCS-2"]
    patient = api.http.get("Patient?identifier=MRN30003").json()["entry"][0]["resource"]
    assert patient["name"][0]["family"] == "Müller"


def test_a_bad_msh_7_timestamp_is_ae_at_msh_7(api: LiveServer, mllp: Running, baseline: tuple[int, int]) -> None:
    acks = exchange(mllp.port, oru("TS-1", ts="20241307251500").encode(), oru("TS-2", ts="yesterday").encode())
    for ack, cid in zip(acks, ["TS-1", "TS-2"], strict=True):
        err = assert_answered(ack, "AE", cid)
        assert err[2:4] == ["MSH^1^7", "102^Data type error^HL70357"]
        assert stored(api, "ANALYZER|CITYLAB", cid).status == ERROR
    assert resources(api) == baseline


def test_nul_in_any_field_is_ae_naming_the_field(api: LiveServer, mllp: Running,
                                                 baseline: tuple[int, int]) -> None:
    in_name = oru("NUL-1", name="Nair^Laks\x00hmi")
    escaped = oru("NUL-2", value="Pale\\X00\\ yellow")  # the hex escape of U+0000 is U+0000 too
    in_control_id = oru("NUL\x00-3")
    acks = exchange(mllp.port, *(m.encode() for m in (in_name, escaped, in_control_id)))
    assert assert_answered(acks[0], "AE", "NUL-1")[2:4] == ["PID^1^5", "102^Data type error^HL70357"]
    assert assert_answered(acks[1], "AE", "NUL-2")[2:4] == ["OBX^2^5", "102^Data type error^HL70357"]
    # MSH-10 keys the store and is echoed: both without the NUL; the error names MSH-10.
    assert assert_answered(acks[2], "AE", "NUL-3")[2:4] == ["MSH^1^10", "102^Data type error^HL70357"]
    assert all("\x00" not in ack for ack in acks)
    assert resources(api) == baseline
    store = MessageStore(api.backend.engine)
    row = stored(api, "ANALYZER|CITYLAB", "NUL-1")
    assert row.status == ERROR and row.error and "PID[1]-5" in row.error and "Laks\\X00\\hmi" in row.raw
    # A replay refuses it again (the stored text keeps the NUL as \X00\): not mapped with the NUL dropped.
    assert mllp.listener.pipeline.replay(ERROR) == {ERROR: 3}
    assert resources(api) == baseline
    assert (again := store.get(row.pk)) is not None and again.attempts == 2 and again.error == row.error
