"""Issue 14 items 1, 4, 5 and 6 (in part) over real loopback MLLP sockets, on both databases: ADT events with
their secondary segments, swaps and identifier moves, BAR accounts, specimen-centric lab messages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from interfaces.mllp.listener import MllpListener
from interfaces.mllp.store import PROCESSED, MessageStore
from tests.conftest import LiveServer
from tests.integration.test_mllp import Running, exchange, golden, search, segment


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def _count(api: LiveServer, query: str) -> int:
    return int(search(api, f"{query}{'&' if '?' in query else '?'}_summary=count")["total"])


def test_adt_secondary_segments_become_their_resources(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, golden("ADT_A06/outpatient_to_inpatient_with_secondary_segments.hl7"),
                    golden("ADT_A60/penicillin_allergy.hl7"), golden("BAR_P01/account_with_diagnosis_and_coverage.hl7"))
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA", "AA"], acks
    [patient] = [e["resource"] for e in search(api, "Patient?identifier=ADT-100")["entry"]]
    ref = f"Patient/{patient['id']}"
    related = search(api, f"RelatedPerson?patient={ref}")["entry"]
    assert related[0]["resource"]["relationship"][0]["coding"][0]["code"] == "SPO"
    allergies = {e["resource"]["code"]["text"]: e["resource"] for e in
                 search(api, f"AllergyIntolerance?patient={ref}")["entry"]}
    assert set(allergies) == {"Penicillin", "Peanuts"} and allergies["Penicillin"]["criticality"] == "high"
    [condition] = search(api, f"Condition?subject={ref}")["entry"]  # the A06 and the BAR name the same DG1
    assert condition["resource"]["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    encounter = search(api, "Encounter?identifier=VIS-9001")["entry"][0]["resource"]
    assert condition["resource"]["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    assert _count(api, f"Procedure?subject={ref}") == 1
    [coverage] = search(api, f"Coverage?beneficiary={ref}")["entry"]
    payer = api.http.get(coverage["resource"]["payor"][0]["reference"]).json()
    assert payer["name"] == "Star Health Insurance"
    assert _count(api, "Organization") == 1  # the payer is found, not created twice
    heights = search(api, f"Observation?subject={ref}&code=http://loinc.org|8302-2")["entry"]
    assert heights[0]["resource"]["valueQuantity"]["value"] == 178
    [account] = search(api, f"Account?subject={ref}")["entry"]
    assert account["resource"]["guarantor"][0]["party"]["display"] == "Ada Okafor"
    # A60 (allergies only): its patient is the other one, and nothing else was written for it.
    other = search(api, "Patient?identifier=ADT-201")["entry"][0]["resource"]
    assert _count(api, f"AllergyIntolerance?patient=Patient/{other['id']}") == 1


def test_swap_beds_and_identifier_change(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, golden("ADT_A17/swap_beds.hl7"), golden("ADT_A47/identifier_change.hl7"))
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA"]
    for mrn, visit in (("ADT-201", "VIS-301"), ("ADT-202", "VIS-302")):
        patient = search(api, f"Patient?identifier={mrn}")["entry"][0]["resource"]
        encounter = search(api, f"Encounter?identifier={visit}")["entry"][0]["resource"]
        assert encounter["subject"]["reference"] == f"Patient/{patient['id']}"
    old = search(api, "Patient?identifier=ADT-300")["entry"][0]["resource"]
    new = search(api, "Patient?identifier=ADT-301")["entry"][0]["resource"]
    assert old["active"] is False and old["link"][0]["type"] == "replaced-by"
    assert new["link"][0] == {"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"}


def test_specimen_centric_lab_messages(api: LiveServer, mllp: Running) -> None:
    acks = exchange(mllp.port, golden("OML_O33/hl7apy_core_03.hl7"), golden("OUL_R22/hapi_example_oul_r22.hl7"))
    assert [segment(a, "MSA")[1] for a in acks] == ["AA", "AA"], acks
    assert MessageStore(api.backend.engine).counts() == {PROCESSED: 2}
    orders = {e["resource"]["code"]["text"]: e["resource"] for e in search(api, "ServiceRequest?_count=50")["entry"]}
    assert len(orders) >= 4
    tpo = orders["ANTI THYROPEROXIDASE ANTIBODIES(TPO)"]
    specimen = api.http.get(tpo["specimen"][0]["reference"]).json()
    assert specimen["identifier"][0]["value"] == "100187400201"
    assert _count(api, "Specimen") == 7 and _count(api, "Observation") >= 5
    report = search(api, "DiagnosticReport")["entry"][0]["resource"]
    assert report["status"] == "final" and len(report["result"]) >= 5


def test_qc_results_are_kept_outside_any_patients_record(api: LiveServer, mllp: Running) -> None:
    [ack] = exchange(mllp.port, golden("OUL_R22/qc_control_specimen.hl7"))
    assert segment(ack, "MSA")[1] == "AA", ack
    [qc] = [e["resource"] for e in search(api, "Observation")["entry"]]
    assert "subject" not in qc and qc["valueQuantity"]["value"] == 101
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0369", "code": "Q"} in qc["category"][1]["coding"]
    assert _count(api, "Patient") == 0 and _count(api, "ServiceRequest") == 0


def _qbp(control_id: str, barcode: str) -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|ANALYZER|CITYLAB|LIS|CITYLAB|20240305100000||QBP^Q11^QBP_Q11|{control_id}|P|2.5.1",
        f"QPD|WOS^Work Order Step^IHE_LABTF|Q-{control_id}|{barcode}",
        "RCP|I||R"]) + "\r").encode()


def test_an_analyser_queries_its_orders_by_barcode(api: LiveServer, mllp: Running) -> None:
    [ack] = exchange(mllp.port, golden("OML_O33/hl7apy_core_03.hl7"))
    assert segment(ack, "MSA")[1] == "AA"
    found, none = exchange(mllp.port, _qbp("Q-1", "100187400201"), _qbp("Q-2", "NO-SUCH-TUBE"))
    assert segment(found, "MSH")[8] == "RSP^K11^RSP_K11" and segment(found, "MSA")[1:3] == ["AA", "Q-1"]
    assert segment(found, "QAK")[1:3] == ["Q-Q-1", "OK"]
    obr = [s.split("|") for s in found.split("\r") if s.startswith("OBR|")]
    assert [o[4].split("^")[1] for o in obr] == ["ANTI THYROPEROXIDASE ANTIBODIES(TPO)"]
    # OBR-2 is the placer number in our namespace: the ServiceRequest's id, as for orders we send.
    tpo = api.http.get(f"ServiceRequest/{obr[0][2].split('^')[0]}").json()
    assert tpo["code"]["text"] == "ANTI THYROPEROXIDASE ANTIBODIES(TPO)"
    assert segment(none, "QAK")[2] == "NF" and "OBR|" not in none
    [again] = exchange(mllp.port, _qbp("Q-1", "100187400201"))
    assert again == found  # stored with its answer: a re-send gets the same one
