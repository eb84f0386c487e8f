"""Issue 18 items 3 and 4, the laboratory's rules (FHIR_WORKFLOWS=laboratory), over real HTTP with real tokens
on both databases, and one ORU^R01 over a real MLLP socket: order -> specimen (unique barcode, collected) ->
results -> report; no results before collection or for a revoked order; final results change only by a
correction; stat before routine in worklists; critical values alert the orderer; turnaround per order."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from fhir_server.rest.server import FhirServer
from fhir_server.workflows.laboratory.turnaround import TURNAROUND
from fhir_server.workflows.rules import RULE_SYSTEM
from interfaces.mllp.listener import MllpListener
from tests.conftest import Backend
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_mllp import Running, exchange, segment

LOINC = "http://loinc.org"
BARCODES = "https://hospital.example/barcode"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend, workflows="laboratory")


@pytest.fixture(scope="module")
def ward(smart: Smart) -> dict[str, str]:
    """A patient, the ordering doctor, a lab technician's token, and the ordering app's (a backend's) token."""
    patient = created(admin(smart, "POST", "Patient", json={"resourceType": "Patient", "name": [{"family": "Lab"}]}))
    doctor = created(admin(smart, "POST", "Practitioner", json={"resourceType": "Practitioner",
                                                                    "name": [{"family": "Orderer"}]}))
    return {"patient": patient["id"], "doctor": doctor["id"],
            "tech": str(_user_token(smart, "lab_technician", "user/*.cruds")["access_token"]),
            "md": smart.system_token("system/ServiceRequest.cruds system/Communication.rs system/Flag.rs "
                                     "system/Observation.cruds")}


_ADMIN_TOKENS: dict[int, str] = {}  # one backend token per server (minting one per request costs a sign-in)


def admin(smart: Smart, method: str, path: str, **kw: Any) -> httpx.Response:
    """Seed and check data with a backend token that may do anything."""
    token = _ADMIN_TOKENS.get(id(smart))
    if token is None:
        token = _ADMIN_TOKENS[id(smart)] = smart.system_token("system/*.cruds")
    return smart.fhir(method, path, token, **kw)


def created(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def refused(r: httpx.Response, status: int, rule: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert issue["details"]["coding"][0] == {"system": RULE_SYSTEM, "code": rule}, issue
    return dict(issue)


def order(smart: Smart, ward: dict[str, str], *, priority: str = "routine", status: str = "active",
          authored: str | None = None, code: str = "2823-3") -> dict[str, Any]:
    return created(smart.fhir("POST", "ServiceRequest", ward["md"], json={
        "resourceType": "ServiceRequest", "status": status, "intent": "order", "priority": priority,
        "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{ward['patient']}"},
        "requester": {"reference": f"Practitioner/{ward['doctor']}"},
        "authoredOn": authored or datetime.now(UTC).isoformat(timespec="seconds")}))


def specimen(smart: Smart, ward: dict[str, str], order_id: str | None, *, collected: bool = True,
             barcode: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"resourceType": "Specimen", "subject": {"reference": f"Patient/{ward['patient']}"},
                            "identifier": [{"system": BARCODES, "value": barcode or uuid.uuid4().hex[:12]}]}
    if order_id:
        body["request"] = [{"reference": f"ServiceRequest/{order_id}"}]
    if collected:
        body["collection"] = {"collectedDateTime": datetime.now(UTC).isoformat(timespec="seconds")}
    return smart.fhir("POST", "Specimen", ward["tech"], json=body)


def result(ward: dict[str, str], order_id: str, value: float = 4.2, *, code: str = "2823-3",
           status: str = "final", unit: str = "mmol/L") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": status, "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": "Potassium"}]},
            "subject": {"reference": f"Patient/{ward['patient']}"},
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def alerts(smart: Smart, order_id: str, observation_id: str) -> list[dict[str, Any]]:
    """The Communications of an order about one result (R4 has no search parameter on Communication.about)."""
    bundle = created(admin(smart, "GET", f"Communication?based-on=ServiceRequest/{order_id}&_count=100"))
    return [e["resource"] for e in bundle.get("entry", [])
            if {"reference": f"Observation/{observation_id}"} in e["resource"].get("about", [])]


def test_a_specimen_barcode_is_unique_per_system(smart: Smart, ward: dict[str, str]) -> None:
    barcode = uuid.uuid4().hex[:10]
    first = created(specimen(smart, ward, None, barcode=barcode))
    issue = refused(specimen(smart, ward, None, barcode=barcode), 409, "lab-specimen-barcode-duplicate")
    assert issue["expression"] == ["Specimen.identifier[0]"]
    # the same label in another system is another barcode; a specimen keeps its own barcode on update
    other = dict(first, identifier=[{"system": BARCODES + "/other", "value": barcode}])
    other.pop("id")
    created(smart.fhir("POST", "Specimen", ward["tech"], json=other))
    created(smart.fhir("PUT", f"Specimen/{first['id']}", ward["tech"], json={**first, "status": "available"}))


def test_concurrent_labels_of_one_barcode_one_wins(smart: Smart, ward: dict[str, str]) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("concurrent writers: PostgreSQL (SQLite serialises writers by its database lock)")
    barcode = uuid.uuid4().hex[:10]
    barrier = threading.Barrier(10)
    statuses: list[int] = []

    def label() -> None:
        with httpx.Client(timeout=60) as http:
            body = {"resourceType": "Specimen", "identifier": [{"system": BARCODES, "value": barcode}],
                    "subject": {"reference": f"Patient/{ward['patient']}"}}
            barrier.wait()
            statuses.append(http.post(f"{smart.base}/Specimen", json=body, headers={
                "Authorization": f"Bearer {ward['tech']}", "Accept": "application/fhir+json"}).status_code)

    threads = [threading.Thread(target=label) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [201] + [409] * 9, statuses
    assert created(admin(smart, "GET", f"Specimen?identifier={BARCODES}|{barcode}"))["total"] == 1


def test_no_results_before_the_specimen_is_collected(smart: Smart, ward: dict[str, str]) -> None:
    sr = order(smart, ward)
    obs = result(ward, sr["id"])
    refused(smart.fhir("POST", "Observation", ward["tech"], json=obs), 409, "lab-specimen-not-collected")
    tube = created(specimen(smart, ward, sr["id"], collected=False))  # labelled, not yet drawn
    issue = refused(smart.fhir("POST", "Observation", ward["tech"], json=obs), 409, "lab-specimen-not-collected")
    assert issue["expression"] == ["Observation.basedOn[0]"]
    report = {"resourceType": "DiagnosticReport", "status": "final", "code": obs["code"],
              "basedOn": obs["basedOn"], "subject": obs["subject"]}
    refused(smart.fhir("POST", "DiagnosticReport", ward["tech"], json=report), 409, "lab-specimen-not-collected")
    tube["collection"] = {"collectedDateTime": datetime.now(UTC).isoformat(timespec="seconds")}
    created(smart.fhir("PUT", f"Specimen/{tube['id']}", ward["tech"], json=tube))
    created(smart.fhir("POST", "Observation", ward["tech"], json=obs))
    # an imaging order takes no specimen: its report needs none
    imaging = created(admin(smart, "POST", "ServiceRequest", json={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005"}]}],
        "code": {"text": "Chest X-ray"}, "subject": {"reference": f"Patient/{ward['patient']}"}}))
    created(smart.fhir("POST", "DiagnosticReport", ward["tech"], json={
        **report, "code": {"text": "Chest X-ray"}, "basedOn": [{"reference": f"ServiceRequest/{imaging['id']}"}]}))
    # a registered placeholder (no value yet) is not a result: allowed before collection
    created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, order(smart, ward)["id"],
                                                                          status="registered")))


def test_a_revoked_order_takes_no_results(smart: Smart, ward: dict[str, str]) -> None:
    sr = order(smart, ward)
    created(specimen(smart, ward, sr["id"]))
    created(smart.fhir("PUT", f"ServiceRequest/{sr['id']}", ward["md"], json={**sr, "status": "revoked"}))
    refused(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, sr["id"])), 409, "lab-order-cancelled")
    report = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "K"},
              "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}]}
    refused(smart.fhir("POST", "DiagnosticReport", ward["tech"], json=report), 409, "lab-order-cancelled")
    live = order(smart, ward)
    created(specimen(smart, ward, live["id"]))
    created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, live["id"])))


def test_a_final_result_changes_only_by_a_corrected_version(smart: Smart, ward: dict[str, str]) -> None:
    sr = order(smart, ward)
    created(specimen(smart, ward, sr["id"]))
    obs = created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, sr["id"], 4.2)))
    changed = {**obs, "valueQuantity": {**obs["valueQuantity"], "value": 4.8}}
    issue = refused(smart.fhir("PUT", f"Observation/{obs['id']}", ward["tech"], json=changed), 409, "lab-result-final")
    assert issue["expression"] == ["Observation.status"]
    created(smart.fhir("PUT", f"Observation/{obs['id']}", ward["tech"], json=obs))  # the same again: no change
    corrected = created(smart.fhir("PUT", f"Observation/{obs['id']}", ward["tech"],
                                   json={**changed, "status": "corrected"}))
    assert corrected["valueQuantity"]["value"] == 4.8 and corrected["meta"]["versionId"] == "3"
    refused(smart.fhir("DELETE", f"Observation/{obs['id']}", ward["md"]), 409, "lab-result-final")
    assert smart.fhir("GET", f"Observation/{obs['id']}", ward["md"]).status_code == 200
    # a vital sign is no laboratory result: not under this rule
    pulse = created(admin(smart, "POST", "Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{ward['patient']}"}, "valueQuantity": {"value": 72, "code": "/min"}}))
    created(admin(smart, "PUT", f"Observation/{pulse['id']}", json={**pulse, "valueQuantity": {"value": 74,
                                                                                              "code": "/min"}}))


def test_stat_before_routine_in_the_worklist(smart: Smart, ward: dict[str, str]) -> None:
    patient = created(admin(smart, "POST", "Patient", json={"resourceType": "Patient"}))["id"]
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    placed = [("routine", 0), ("stat", 5), ("urgent", 1), ("asap", 2), ("stat", 3), ("routine", 4)]
    for priority, minutes in placed:
        created(smart.fhir("POST", "ServiceRequest", ward["md"], json={
            "resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": priority,
            "code": {"text": f"{priority}-{minutes}"}, "subject": {"reference": f"Patient/{patient}"},
            "authoredOn": (start + timedelta(minutes=minutes)).isoformat()}))
    created(smart.fhir("POST", "ServiceRequest", ward["md"], json={
        "resourceType": "ServiceRequest", "status": "revoked", "intent": "order", "priority": "stat",
        "code": {"text": "revoked"}, "subject": {"reference": f"Patient/{patient}"}}))

    def worklist(sort: str) -> list[str]:
        r = smart.fhir("GET", f"ServiceRequest?status=active&subject=Patient/{patient}&_sort={sort}&_count=3",
                       ward["tech"])
        bundle = created(r)
        names = [e["resource"]["code"]["text"] for e in bundle["entry"]]
        following = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        while following:  # the cursor pages keep the order
            page = created(smart.http.get(following[0], headers={"Authorization": f"Bearer {ward['tech']}"}))
            names += [e["resource"]["code"]["text"] for e in page["entry"]]
            following = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        return names

    assert worklist("priority,authored") == ["stat-3", "stat-5", "asap-2", "urgent-1", "routine-0", "routine-4"]
    assert worklist("-priority,authored") == ["routine-0", "routine-4", "urgent-1", "asap-2", "stat-3", "stat-5"]


def test_a_critical_value_alerts_the_ordering_doctor(smart: Smart, ward: dict[str, str]) -> None:
    sr = order(smart, ward)
    created(specimen(smart, ward, sr["id"]))
    normal = created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, sr["id"], 4.1)))
    assert alerts(smart, sr["id"], normal["id"]) == []
    # the technician may write neither Flag nor Communication: the server raises them itself
    high = created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, sr["id"], 7.1)))
    [comm] = alerts(smart, sr["id"], high["id"])
    assert created(smart.fhir("GET", f"Communication/{comm['id']}", ward["md"]))["status"] == "completed"
    assert comm["recipient"] == [{"reference": f"Practitioner/{ward['doctor']}"}]
    assert comm["priority"] == "stat" and comm["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert "7.1 mmol/L" in comm["payload"][0]["contentString"]
    flag_ref = next(a["reference"] for a in comm["about"] if a["reference"].startswith("Flag/"))
    flag = created(smart.fhir("GET", flag_ref, ward["md"]))
    assert flag["status"] == "active" and flag["subject"] == {"reference": f"Patient/{ward['patient']}"}
    assert flag["extension"][0]["valueReference"] == {"reference": f"Observation/{high['id']}"}
    # a corrected version, still critical, raises nothing new
    created(smart.fhir("PUT", f"Observation/{high['id']}", ward["tech"],
                       json={**high, "status": "corrected", "valueQuantity": {**high["valueQuantity"], "value": 7.0}}))
    assert len(alerts(smart, sr["id"], high["id"])) == 1


def test_a_critical_value_fires_the_subscriptions_on_alerts(smart: Smart, ward: dict[str, str]) -> None:
    sub = created(admin(smart, "POST", "Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "ward alerts",
        "criteria": "Communication?category=alert", "channel": {"type": "websocket"}}))
    reader = smart.system_token("system/Subscription.rs system/Communication.rs")
    sr = order(smart, ward)
    created(specimen(smart, ward, sr["id"]))
    url = smart.base.replace("http://", "ws://") + "/subscriptions/ws"
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {reader}"}) as ws:
            ws.send(f"bind {sub['id']}")
            assert ws.recv(timeout=10) == f"bound {sub['id']}"
            created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, sr["id"], 3.9)))  # normal
            created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, sr["id"], 1.9)))  # critical
            assert ws.recv(timeout=10) == f"ping {sub['id']}"
    finally:
        admin(smart, "DELETE", f"Subscription/{sub['id']}")


def test_critical_limits_are_data_the_hospital_configures(smart: Smart, ward: dict[str, str]) -> None:
    sr = order(smart, ward, code="1920-8")
    created(specimen(smart, ward, sr["id"]))
    ast = result(ward, sr["id"], 900, code="1920-8", unit="U/L")
    first = created(smart.fhir("POST", "Observation", ward["tech"], json=ast))  # AST: no shipped limit
    assert alerts(smart, sr["id"], first["id"]) == []
    created(admin(smart, "PUT", "ObservationDefinition/critical-1920-8", json={
        "resourceType": "ObservationDefinition", "id": "critical-1920-8",
        "code": {"coding": [{"system": LOINC, "code": "1920-8"}]},
        "qualifiedInterval": [{"category": "critical", "range": {"high": {"value": 500, "code": "U/L"}}}]}))
    second = created(smart.fhir("POST", "Observation", ward["tech"], json=ast))
    assert len(alerts(smart, sr["id"], second["id"])) == 1


def test_turnaround_time_is_recorded_on_the_order(smart: Smart, ward: dict[str, str]) -> None:
    ordered = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    sr = order(smart, ward, authored=ordered.isoformat())
    created(specimen(smart, ward, sr["id"]))
    obs = created(smart.fhir("POST", "Observation", ward["tech"], json=result(ward, sr["id"])))
    report = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "Potassium"},
              "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
              "result": [{"reference": f"Observation/{obs['id']}"}],
              "subject": {"reference": f"Patient/{ward['patient']}"},
              "issued": (ordered + timedelta(minutes=95)).isoformat()}
    preliminary = created(smart.fhir("POST", "DiagnosticReport", ward["tech"],
                                     json={**report, "status": "preliminary"}))
    assert "extension" not in created(smart.fhir("GET", f"ServiceRequest/{sr['id']}", ward["md"]))
    created(smart.fhir("PUT", f"DiagnosticReport/{preliminary['id']}", ward["tech"], json={**preliminary, **report}))
    done = created(smart.fhir("GET", f"ServiceRequest/{sr['id']}", ward["md"]))
    assert done["status"] == "completed"
    [tat] = [e for e in done["extension"] if e["url"] == TURNAROUND]
    assert tat["valueDuration"] == {"value": 95.0, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}


def test_an_analyser_result_for_a_revoked_order_is_refused_over_mllp(smart: Smart, ward: dict[str, str]) -> None:
    sr = order(smart, ward)
    created(specimen(smart, ward, sr["id"]))
    created(smart.fhir("PUT", f"ServiceRequest/{sr['id']}", ward["md"], json={**sr, "status": "revoked"}))
    settings = smart.backend.settings.model_copy(update={"workflows": "laboratory"})
    running = Running(MllpListener(FhirServer(settings, smart.backend.engine), host="127.0.0.1", port=0))
    try:
        oru = "\r".join([
            "MSH|^~\\&|LIS|LAB|FHIR-SERVER|HOSPITAL|20260305101500||ORU^R01^ORU_R01|REV-1|P|2.5.1",
            "PID|1||MRN-REV^^^HOSP^MR||Rao^Meera||19800101|F",
            f"OBR|1|{sr['id']}^FHIR-SERVER|F-REV^LAB|2823-3^Potassium^LN|||20260305093000|||||||||||||||"
            "20260305101000||CH|F",
            "OBX|1|NM|2823-3^Potassium^LN||4.4|mmol/L|3.5-5.1|N|||F"]) + "\r"
        [ack] = exchange(running.port, oru.encode())
    finally:
        running.stop()
    assert segment(ack, "MSA")[1] in ("AE", "AR"), ack
    err = segment(ack, "ERR")
    assert "cancelled order" in ack or "revoked" in ack, err
    assert created(admin(smart, "GET", f"Observation?based-on=ServiceRequest/{sr['id']}"))["total"] == 0
