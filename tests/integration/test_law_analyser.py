"""Issue 14 items 1-3: a lab analyser speaking IHE LAW (tests/sim/law_analyser.py, its own process) against the
server over real MLLP sockets both ways, on both databases: it queries its work orders by barcode, receives the
OML^O33 the outbox pushes to its port, sends results, a QC run and a correction, and checks every ACK."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_server.rest.server import FhirServer
from fhir_server.storage.outbox import OutboxDispatcher
from interfaces.mllp.listener import MllpListener
from interfaces.mllp.outbound import TOPIC, OrderSender
from tests.conftest import PROCESS_START_TIMEOUT, LiveServer, _free_port, wait_until
from tests.integration.test_mllp import Running, exchange, exchange_n, search, segment

SIMULATOR = Path(__file__).resolve().parents[1] / "sim" / "law_analyser.py"
ANALYSER = "urn:fhir-server:hl7v2:authority:CITYLAB"  # OBX-18 "AN-01^CITYLAB": namespace CITYLAB
TUBES = "https://hospital.example.org/fhir/sid/specimen-barcode"  # the labels the hospital prints


@pytest.fixture
def mllp(api: LiveServer) -> Iterator[Running]:
    running = Running(MllpListener(api.fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


@pytest.fixture
def lab_mllp(api: LiveServer) -> Iterator[Running]:
    """The listener of a hospital that enforces the laboratory's rules (FHIR_WORKFLOWS=laboratory: results need a
    collected specimen, a final result changes only by a corrected version, barcodes are unique)."""
    fhir = FhirServer(api.fhir.settings.model_copy(update={"workflows": "laboratory"}), api.backend.engine)
    running = Running(MllpListener(fhir, host="127.0.0.1", port=0))
    yield running
    running.stop()


def _post(api: LiveServer, resource: dict[str, Any]) -> dict[str, Any]:
    response = api.http.post(resource["resourceType"], json=resource)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _analyser_order(api: LiveServer, port: int, barcode: str) -> dict[str, Any]:
    """A glucose order on a tube, for the chemistry analyser, whose bench has an MLLP endpoint (R4 Device has
    none: the order goes out through the Device's Location)."""
    endpoint = _post(api, {"resourceType": "Endpoint", "status": "active", "address": f"mllp://127.0.0.1:{port}",
                           "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                              "code": "hl7v2-mllp"}, "payloadType": [{"text": "OML^O33"}]})
    bench = _post(api, {"resourceType": "Location", "name": "Chemistry bench",
                        "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}]})
    device = _post(api, {"resourceType": "Device", "identifier": [{"system": ANALYSER, "value": "AN-01"}],
                         "deviceName": [{"name": "Chemistry analyser", "type": "user-friendly-name"}],
                         "location": {"reference": f"Location/{bench['id']}"}})
    patient = _post(api, {"resourceType": "Patient", "name": [{"family": "Rao", "given": ["Meera"]}],
                          "identifier": [{"system": "urn:fhir-server:hl7v2:authority:HOSP", "value": "MRN-9"}]})
    specimen = _post(api, {"resourceType": "Specimen", "identifier": [{"system": TUBES, "value": barcode}],
                           "collection": {"collector": {"display": "Nurse Anu"}},
                           "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0487",
                                                "code": "SER"}]},
                           "subject": {"reference": f"Patient/{patient['id']}"}})
    order = _post(api, {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "stat",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
                        "subject": {"reference": f"Patient/{patient['id']}"},
                        "performer": [{"reference": f"Device/{device['id']}"}],
                        "specimen": [{"reference": f"Specimen/{specimen['id']}"}]})
    return {"order": order, "device": device, "patient": patient, "specimen": specimen}


@pytest.mark.parametrize("rules", ["none", "laboratory"])
def test_a_law_analyser_queries_receives_its_work_order_and_delivers_results(api: LiveServer, rules: str,
                                                                             request: pytest.FixtureRequest) -> None:
    mllp: Running = request.getfixturevalue("lab_mllp" if rules == "laboratory" else "mllp")
    port, barcode = _free_port(), "TUBE-0042"
    made = _analyser_order(api, port, barcode)
    sim = subprocess.Popen([sys.executable, str(SIMULATOR), "--server", f"127.0.0.1:{mllp.port}", "--listen",
                            str(port), "--barcode", barcode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        assert sim.stdout is not None
        assert sim.stdout.readline().strip() == "READY"
        dispatcher = OutboxDispatcher(api.backend.engine, backoff_base=0.01)
        dispatcher.register(TOPIC, OrderSender(api.fhir, timeout=30))
        # The work order goes out through the outbox to the analyser's port (LAB-28).
        wait_until(lambda: dispatcher.run_once() > 0, PROCESS_START_TIMEOUT, "the OML^O33 to be delivered")
        out, _ = sim.communicate(timeout=PROCESS_START_TIMEOUT)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    assert sim.returncode == 0, out
    assert '"ok": true' in out, out

    order, patient = made["order"], made["patient"]
    sent = api.http.get(f"ServiceRequest/{order['id']}").json()
    assert sent["extension"][0]["extension"][0]["valueCode"] == "AA"  # the analyser's ORL^O34, recorded

    # The results are the patient's (the analyser sent no PID: the order found by the tube's barcode says whose),
    # on that order, from that analyser; the correction superseded the first value instead of adding one.
    [result] = [e["resource"] for e in search(api, f"Observation?subject=Patient/{patient['id']}")["entry"]]
    assert result["valueQuantity"]["value"] == 102 and result["status"] == "corrected"
    assert result["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert result["device"] == {"reference": f"Device/{made['device']['id']}"}
    history = api.http.get(f"Observation/{result['id']}/_history").json()
    assert sorted(e["resource"]["valueQuantity"]["value"] for e in history["entry"]) == [98, 102]
    [report] = [e["resource"] for e in search(api, f"DiagnosticReport?subject=Patient/{patient['id']}")["entry"]]
    assert report["status"] == "corrected" and report["result"] == [{"reference": f"Observation/{result['id']}"}]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    # The tube is the order's own Specimen, now with the container the analyser reported (SAC), not a second one.
    assert result["specimen"] == {"reference": f"Specimen/{made['specimen']['id']}"}
    specimen = api.http.get(result["specimen"]["reference"]).json()
    assert specimen["container"][0]["identifier"][0]["value"] == barcode
    assert specimen["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert specimen["identifier"][0] == {"system": TUBES, "value": barcode}  # the hospital's label stays
    assert specimen["collection"] == {"collector": {"display": "Nurse Anu"},  # SPM-17 merged into what we had
                                      "collectedDateTime": "2024-03-05T09:00:00+00:00"}
    assert int(search(api, f"Specimen?identifier={barcode}&_summary=count")["total"]) == 1

    # The QC run is kept, with its role as category, in nobody's record and on no order.
    [qc] = [e["resource"] for e in search(api, "Observation?code=http://loinc.org|2345-7")["entry"]
            if "subject" not in e["resource"]]
    assert qc["valueQuantity"]["value"] == 101 and "basedOn" not in qc
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0369", "code": "Q"} in qc["category"][1]["coding"]
    assert qc["device"] == {"reference": f"Device/{made['device']['id']}"}
    everything = api.http.get(f"Patient/{patient['id']}/$everything").json()
    assert qc["id"] not in {e["resource"]["id"] for e in everything["entry"]}
    assert int(search(api, "Device?_summary=count")["total"]) == 1  # OBX-18 named the analyser we have


def _oul(control_id: str, placer: str, barcode: str, pid: bool = True) -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|ANALYSER|CITYLAB|LIS|HOSPITAL|20240305101500||OUL^R22^OUL_R22|{control_id}|P|2.5.1",
        *(["PID|1||MRN-OTHER^^^HOSP^MR||Doe^Jan"] if pid else []),
        f"SPM|1|{barcode}||SER|||||||P", f"SAC|||{barcode}",
        f"OBR|1|{placer}||2345-7^Glucose^LN", f"ORC|SC|{placer}",
        "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|||||F"]) + "\r").encode()


def test_results_match_their_order_by_barcode_first_and_ambiguity_is_an_error(api: LiveServer,
                                                                              mllp: Running) -> None:
    made = _analyser_order(api, _free_port(), "TUBE-7")
    second = {k: v for k, v in made["order"].items() if k not in ("id", "meta")}  # a second test on the same tube
    sodium = _post(api, {**second, "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]}})
    # Two earlier orders share the placer number P-1 of authority HIS (sent twice, e.g. by two systems).
    for n in (1, 2):
        _post(api, {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                    "identifier": [{"system": "urn:fhir-server:hl7v2:authority:HIS", "value": "P-1"}],
                    "code": {"text": f"order {n}"}, "subject": made["order"]["subject"]})
    # The barcode decides first: of the tube's two orders, the one for this test (OBR-4), whatever the placer
    # number says.
    by_barcode, ambiguous, unknown = exchange(mllp.port, _oul("B-1", "P-1^HIS", "TUBE-7", pid=False),
                                              _oul("B-2", "P-1^HIS", "NO-SUCH-TUBE", pid=False),
                                              _oul("B-3", "P-9^HIS", "NO-SUCH-TUBE", pid=False))
    assert segment(by_barcode, "MSA")[1] == "AA", by_barcode
    [obs] = [e["resource"] for e in search(api, "Observation")["entry"]]
    assert obs["basedOn"] == [{"reference": f"ServiceRequest/{made['order']['id']}"}] != \
        [{"reference": f"ServiceRequest/{sodium['id']}"}]
    # No tube known, two orders with that placer number: AE 205 naming OBR-2 (nothing written).
    assert segment(ambiguous, "MSA")[1] == "AE", ambiguous
    assert segment(ambiguous, "ERR")[2:4] == ["OBR^1^2", "205^Duplicate key identifier^HL70357"], ambiguous
    # No order at all and no PID: nowhere to file the result, AE 204 naming the barcode's SPM-2.
    assert segment(unknown, "MSA")[1] == "AE" and segment(unknown, "ERR")[2].startswith("SPM^1^2"), unknown
    assert int(search(api, "Observation?_summary=count")["total"]) == 1


def _qbp(control_id: str, barcode: str, accept: str, application: str) -> bytes:
    return ("\r".join([
        f"MSH|^~\\&|ANALYSER|CITYLAB|LIS|HOSPITAL|20240305100000||QBP^Q11^QBP_Q11|{control_id}|P|2.5.1|||"
        f"{accept}|{application}",
        f"QPD|WOS^Work Order Step^IHE_LABTF|T-{control_id}|{barcode}", "RCP|I||R"]) + "\r").encode()


def test_an_order_query_in_enhanced_mode_gets_what_msh_15_and_16_ask_for(api: LiveServer, mllp: Running) -> None:
    made = _analyser_order(api, _free_port(), "TUBE-9")
    accept, response = exchange_n(mllp.port, _qbp("E-1", "TUBE-9", "AL", "AL"), 2)
    assert segment(accept, "MSA")[1:3] == ["CA", "E-1"] and segment(accept, "MSH")[8].startswith("ACK")
    assert segment(response, "MSH")[8] == "RSP^K11^RSP_K11" and segment(response, "MSA")[1:3] == ["AA", "E-1"]
    assert segment(response, "OBR")[2] == f"{made['order']['id']}^FHIR-SERVER"
    # Only the application response (MSH-15 NE), and a re-send gets the stored answers again.
    [only] = exchange(mllp.port, _qbp("E-2", "TUBE-9", "NE", "AL"))
    assert segment(only, "MSH")[8] == "RSP^K11^RSP_K11" and segment(only, "QAK")[2] == "OK"
    assert exchange_n(mllp.port, _qbp("E-1", "TUBE-9", "AL", "AL"), 2) == [accept, response]
