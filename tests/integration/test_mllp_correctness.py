"""Issue 14 items 7-10 over real loopback MLLP sockets, on both databases: identifiers without an assigning
authority, several orders in one message, acknowledgement modes of refused messages, reused control ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from interfaces.mllp.framing import encode
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.store import PROCESSED, REJECTED, MessageStore
from tests.conftest import LiveServer
from tests.integration.test_mllp import Running, connect, exchange, golden, read_acks, search, segment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def _msg(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


def _oru(sender: str, control_id: str, pid3: str, value: str = "95") -> bytes:
    return _msg(f"MSH|^~\\&|{sender}|FHIR|HOSP|20240305090000+0530||ORU^R01^ORU_R01|{control_id}|P|2.5",
                f"PID|1||{pid3}||Rao^Meera||19800101|F",
                "OBR|1|PL-1|FL-1|2345-7^Glucose^LN|||20240305083000+0530||||||||||||||||||F",
                f"OBX|1|NM|2345-7^Glucose^LN||{value}|mg/dL|70-105|N|||F")


def _patients(api: LiveServer) -> list[dict[str, object]]:
    return [e["resource"] for e in search(api, "Patient").get("entry", [])]


# -- item 7 -----------------------------------------------------------------------------------------------
def test_an_identifier_without_authority_never_matches_another_systems(api: LiveServer, mllp: Running) -> None:
    ssn = _msg("MSH|^~\\&|HIS|HOSP|FHIR|HOSP|20240301080000+0100||ADT^A04^ADT_A01|ADT-1|P|2.5",
               "EVN|A04|20240301080000+0100",
               "PID|1||123456789^^^SSA^SS||Okafor^Chidi||19880101|M",
               "PV1|1|O")
    acks = exchange(mllp.port, ssn, _oru("LAB|CITYLAB", "R-1", "123456789"), _oru("LIS|OTHERLAB", "R-2", "123456789"))
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA", "AA"]
    patients = _patients(api)
    assert len(patients) == 3  # the bare number of each lab is its own identifier, not the SSN
    systems = sorted(str(p["identifier"][0]["system"]) for p in patients)  # type: ignore[index]
    assert systems == ["urn:fhir-server:hl7v2:authority:SSA", "urn:fhir-server:hl7v2:sender:LAB%7CCITYLAB",
                       "urn:fhir-server:hl7v2:sender:LIS%7COTHERLAB"]
    assert search(api, "Patient?identifier=urn:fhir-server:hl7v2:authority:SSA|123456789")["total"] == 1
    # The same lab again: its own earlier patient, not a new one.
    [ack] = exchange(mllp.port, _oru("LAB|CITYLAB", "R-3", "123456789", "99"))
    assert segment(ack, "MSA")[1] == "AA" and len(_patients(api)) == 3


def test_a_facility_authority_is_configurable(api: LiveServer) -> None:
    settings = api.backend.settings.model_copy(update={"hl7_facility_authorities": {"CITYLAB": "HOSP"},
                                                       "hl7_identifier_systems": {"HOSP": "https://hosp.example/mrn"}})
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0, settings=settings))
    try:
        adt = _msg("MSH|^~\\&|HIS|HOSP|FHIR|HOSP|20240301080000+0100||ADT^A04^ADT_A01|ADT-2|P|2.5",
                   "PID|1||MRN77^^^HOSP^MR||Iyer^Kavya||19900101|F", "PV1|1|O")
        acks = exchange(running.port, adt, _oru("LAB|CITYLAB", "R-9", "MRN77"))
        assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA"]
        [patient] = _patients(api)  # the lab's bare MRN is the hospital's MRN: one patient
        report = search(api, "DiagnosticReport")["entry"][0]["resource"]
        assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    finally:
        running.stop()


# -- item 8 -----------------------------------------------------------------------------------------------
def test_several_orders_in_one_message_are_distinct_service_requests(api: LiveServer, mllp: Running) -> None:
    [ack] = exchange(mllp.port, golden("ORM_O01/three_orders_no_placer_number.hl7"))
    assert segment(ack, "MSA")[1] == "AA", ack
    orders = search(api, "ServiceRequest")["entry"]
    assert sorted(e["resource"]["code"]["text"] for e in orders) == ["Complete blood count", "Complete blood count",
                                                                    "Lipid panel"]


# -- item 9 -----------------------------------------------------------------------------------------------
def _unsupported(accept: str, application: str, control_id: str) -> bytes:
    return _msg(f"MSH|^~\\&|HIS|HOSP|FHIR|HOSP|20240301080000||ZZZ^Z01|{control_id}|P|2.5|||{accept}|{application}",
                "PID|1||X1^^^HOSP^MR")


@pytest.mark.parametrize(("accept", "application", "expected"), [
    ("NE", "AL", ["AR"]), ("AL", "AL", ["CR", "AR"]), ("AL", "NE", ["CR"]), ("ER", "ER", ["CR", "AR"]),
    ("", "", ["AR"]),
])
def test_a_refused_message_gets_the_acks_its_sender_asked_for(api: LiveServer, mllp: Running, accept: str,
                                                              application: str, expected: list[str]) -> None:
    message = _unsupported(accept, application, f"Z-{accept}-{application}")
    with connect(mllp.port) as sock:
        sock.sendall(encode(message))
        acks = read_acks(sock, len(expected))
        sock.settimeout(0.3)  # and nothing more: the listener sends exactly what MSH-15/16 ask
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert [segment(a, "MSA")[1] for a in acks] == expected
    assert all(segment(a, "MSA")[2] == f"Z-{accept}-{application}" for a in acks)
    assert MessageStore(api.backend.engine).counts() == {REJECTED: 1}


def test_no_acks_asked_none_sent_but_the_message_is_stored(api: LiveServer, mllp: Running) -> None:
    with connect(mllp.port) as sock:
        sock.sendall(encode(_unsupported("NE", "NE", "Z-NE")))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert MessageStore(api.backend.engine).counts() == {REJECTED: 1}


# -- item 10 ----------------------------------------------------------------------------------------------
def test_a_reused_control_id_is_processed_as_new_with_a_warning(api: LiveServer, mllp: Running) -> None:
    first = _oru("LAB|CITYLAB", "R-100", "MRN1^^^HOSP^MR", "95")
    resent = first.replace(b"20240305090000+0530", b"20240305091500+0530")  # MSH-7 only: a duplicate
    other = _oru("LAB|CITYLAB", "R-100", "MRN2^^^HOSP^MR", "120")  # the counter restarted: another message
    [a1] = exchange(mllp.port, first)
    [a2] = exchange(mllp.port, resent)
    assert a2 == a1  # the original ACK, nothing processed again
    [a3] = exchange(mllp.port, other)
    assert segment(a3, "MSA")[1:3] == ["AA", "R-100"] and a3 != a1
    [a4] = exchange(mllp.port, other)  # and that one re-sent is its own duplicate
    assert a4 == a3
    assert len(_patients(api)) == 2 and search(api, "Provenance")["total"] == 2
    store = MessageStore(api.backend.engine)
    assert store.counts() == {PROCESSED: 2}
    warned, [row] = store.warnings()
    assert warned == 1 and row.control_id is not None and row.control_id.startswith("R-100#reused-")
    env = {**os.environ, "FHIR_DATABASE_URL": api.backend.settings.database_url}
    stats = subprocess.run([sys.executable, "-m", "fhir_server.cli", "hl7", "stats"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    out = json.loads(stats.stdout)
    assert out["warnings"] == 1 and "already used" in out["latestWarnings"][0]["warning"], stats.stderr


def test_a_reused_control_id_can_be_refused_instead(api: LiveServer) -> None:
    settings = api.backend.settings.model_copy(update={"hl7_reused_control_id": "reject"})
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0, settings=settings))
    try:
        [a1] = exchange(running.port, _oru("LAB|CITYLAB", "R-200", "MRN1^^^HOSP^MR", "95"))
        [a2] = exchange(running.port, _oru("LAB|CITYLAB", "R-200", "MRN2^^^HOSP^MR", "120"))
    finally:
        running.stop()
    assert segment(a1, "MSA")[1] == "AA"
    assert segment(a2, "MSA")[1] == "AR" and segment(a2, "ERR")[2] == "MSH^1^10" and "205" in segment(a2, "ERR")[3]
    assert len(_patients(api)) == 1
    assert MessageStore(api.backend.engine).counts() == {PROCESSED: 1, REJECTED: 1}  # nothing lost
