"""Messages as real senders send them (issue 14's coverage goal): Z-segments, v2.1/2.2, MSH-2 variants, over
real MLLP sockets against the live server of each backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from interfaces.mllp.framing import encode
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.pipeline import Hl7Pipeline
from interfaces.mllp.store import ERROR, PROCESSED, REJECTED, MessageStore
from tests.conftest import BACKENDS, LiveServer
from tests.integration.test_mllp import GOLDEN, Running, connect, exchange, read_acks, search, segment

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

LEGACY_ORU = ("MSH|^~\\&|RADIS1||DMCRES||19940502161633||ORU^R01|V22-1|P|2.2|964||AL|AL\r"
              "PID|||N00803^^^RADIS1^MR||RADIOLOGY^INPATIENT^SIX||19520606|F\r"
              "OBR|1|003555.0015.001^DMCRES|0000000566^RADIS1|37953^CT CHEST^L|||199405021545\r"
              "OBX|1|TX|FIND^FINDINGS^L|1|No mass seen.||||||F\r")


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def err_segments(ack: str) -> list[list[str]]:
    return [s.split("|") for s in ack.split("\r") if s.startswith("ERR|")]


def test_z_segments_are_accepted_named_in_a_warning_and_kept(api: LiveServer, mllp: Running) -> None:
    a04 = (GOLDEN / "ADT_A04" / "register_outpatient.hl7").read_bytes()  # ends with a ZPI segment
    assert b"\rZPI|" in a04 or b"\nZPI|" in a04
    [ack] = exchange(mllp.port, a04)
    assert segment(ack, "MSA")[1] == "AA"
    [err] = err_segments(ack)
    assert err[2] == "ZPI^1" and err[3].startswith("0^") and err[4] == "W" and "not mapped" in err[8]
    assert search(api, "Patient?_summary=count")["total"] == 1  # everything known is mapped all the same
    store = MessageStore(api.backend.engine)
    [row] = store.with_status(PROCESSED)
    assert "ZPI|" in row.raw and "ZPI[1]" in (row.error or "")  # the content stays; the warning is recorded
    assert store.warnings()[0] == 1  # `hl7 stats` counts it


def test_v2_2_is_read_as_2_3_with_a_warning_and_can_be_turned_off(api: LiveServer, mllp: Running) -> None:
    with connect(mllp.port) as sock:  # enhanced mode: CA, then the application ACK
        sock.sendall(encode(LEGACY_ORU.encode()))
        accept, app = read_acks(sock, 2)
    assert segment(accept, "MSA")[1] == "CA" and segment(app, "MSA")[1] == "AA"
    assert "2.3" in segment(app, "MSA")[3]  # before 2.5 an ERR has no severity: MSA-3 says it in words
    assert err_segments(app)[0][1].startswith("MSH^1^12^203")
    [report] = [e["resource"] for e in search(api, "DiagnosticReport")["entry"]]
    [obs] = [e["resource"] for e in search(api, "Observation")["entry"]]
    assert report["code"]["coding"][0]["code"] == "37953" and obs["valueString"] == "No mass seen."

    strict = Hl7Pipeline(api.fhir, MessageStore(api.backend.engine),
                         settings=api.fhir.settings.model_copy(update={"hl7_legacy_versions": False}))
    refused = strict.handle(LEGACY_ORU.replace("|V22-1|", "|V22-2|").encode())
    assert [segment(a, "MSA")[1] for a in refused] == ["CR", "AR"]
    assert err_segments(refused[1])[0][1].startswith("MSH^1^12^203")
    assert "hl7_legacy_versions" in segment(refused[1], "MSA")[3]
    assert MessageStore(api.backend.engine).counts() == {PROCESSED: 1, REJECTED: 1}


def test_msh_2_doubled_escape_is_read_and_broken_msh_2_is_refused_naming_it(api: LiveServer,
                                                                              mllp: Running) -> None:
    doubled = (GOLDEN / "ADT_A01" / "lfh_doubled_escape_msh2.hl7").read_bytes()  # ^~\\& as a Java literal
    broken = (GOLDEN / "rejected" / "hl7apy_duplicate_encoding_chars.hl7").read_bytes()  # ^&&^, MSH-16 AL
    with connect(mllp.port) as sock:
        sock.sendall(encode(doubled) + encode(broken))
        ok, commit_reject, refused = read_acks(sock, 3)
    assert segment(ok, "MSA")[1:3] == ["CA", "102"]  # MSH-15 AL, MSH-16 NE: the accept ACK alone
    # MSH-16 AL (enhanced mode, read with the standard delimiters): CR, then AR, MSH-10 still echoed
    assert segment(commit_reject, "MSA")[1:3] == ["CR", "0123456789"]
    assert segment(refused, "MSA")[1:3] == ["AR", "0123456789"]
    [err] = err_segments(refused)
    assert err[2] == "MSH^1^2" and err[3].startswith("102^") and "MSH-2 encoding characters" in err[8]
    assert search(api, "Patient?_summary=count")["total"] == 1


def test_a_cut_batch_processes_its_whole_messages_and_names_what_was_left_over(api: LiveServer,
                                                                              mllp: Running) -> None:
    # A stray BHS cuts the only message after its EVN: the message gets what it deserves (AE, PID missing),
    # the segments after the stray BHS are stored as rejected and named in the reply's BHS-10.
    batch = (GOLDEN.parent / "hl7v2-batches" / "python_hl7_bad_batch1.hl7").read_bytes()
    [reply] = exchange(mllp.port, batch.replace(b"|||NE|NE|AU|", b"|||NE|AL|AU|"))
    segments = reply.rstrip("\r").split("\r")
    bhs = segments[0].split("|")
    assert bhs[0] == "BHS" and "(PID, PD1, NK1, PV1) not processed" in bhs[9]
    assert [s.split("|")[1] for s in segments if s.startswith("MSA|")] == ["AE"]
    assert any(s.startswith("ERR|") and "PID is required" in s for s in segments) and segments[-1] == "BTS|1"
    store = MessageStore(api.backend.engine)
    assert store.counts() == {ERROR: 1, REJECTED: 1}
    [left] = store.with_status(REJECTED)
    assert left.raw.startswith("PID|1||0000112234") and "outside any message" in (left.error or "")


def test_qry_a19_is_answered_with_adr_a19_and_omd_becomes_a_nutrition_order(api: LiveServer,
                                                                            mllp: Running) -> None:
    [ack] = exchange(mllp.port, (GOLDEN / "ADT_A04" / "register_outpatient.hl7").read_bytes())  # Patient ADT-100
    assert segment(ack, "MSA")[1] == "AA"
    query = ("MSH|^~\\&|CLINIC|HOSP|FHIR|HOSP|20240301090000||QRY^A19|Q-{n}|P|2.3\r"
             "QRD|20240301090000|R|I|QID-{n}|||1^RD|{who}|DEM\r")
    found, missing = exchange(mllp.port, query.format(n=1, who="ADT-100").encode(),
                              query.format(n=2, who="NOBODY").encode())
    lines = found.rstrip("\r").split("\r")
    assert lines[0].split("|")[8] == "ADR^A19^ADR_A19" and segment(found, "MSA")[1:3] == ["AA", "Q-1"]
    assert segment(found, "QAK")[1:3] == ["QID-1", "OK"] and segment(found, "QRD")[8] == "ADT-100"
    pid = segment(found, "PID")
    assert pid[3].split("^")[0] == "ADT-100" and pid[5].startswith("Okafor^Chidi") and pid[8] == "M"
    assert segment(missing, "QAK")[2] == "NF" and "PID|" not in missing
    [other] = exchange(mllp.port, query.replace("QRY^A19", "QRY^Q01").format(n=3, who="ADT-100").encode())
    assert segment(other, "MSA")[1] == "AR" and segment(other, "ERR")[1].startswith("MSH^1^9^201&")  # 2.3: ERR-1

    omd = (GOLDEN / "OMD_O03" / "hapi_omd_o03.hl7").read_bytes()  # MSH-15 ER, MSH-16 AL: the AA alone
    [ack] = exchange(mllp.port, omd)
    assert segment(ack, "MSA")[1] == "AA"
    [order] = [e["resource"] for e in search(api, "NutritionOrder")["entry"]]
    assert order["oralDiet"]["type"][0]["coding"][0]["code"] == "PAN4"
    assert [m["text"] for m in order["foodPreferenceModifier"]] == ["LACT", "SIN SAL", "DIABETICO"]
