"""ABDM records beyond the OP visit, with the hospital's workflows on (front desk, billing): discovery through the
front desk's master patient index, and WellnessRecord, DischargeSummaryRecord, HealthDocumentRecord and
InvoiceRecord documents, each received by the simulated HIU and valid against the installed NRCeS IG."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.rest.request import FhirRequest
from fhir_server.storage.access import as_system
from interfaces.abdm.identity import ABHA_NUMBER_SYSTEM
from tests.integration.abdm_support import (
    DISCOVER,
    HIP_ID,
    Hospital,
    Simulator,
    grant,
    hospital_on,
    request_data,
    start_simulator,
    transfer_notice,
    visit_data,
)

PRICELIST = Path(__file__).parents[2] / "fhir_server" / "workflows" / "billing" / "pricelist.json"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"
VITALS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    yield from start_simulator()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(request: pytest.FixtureRequest, sim: Simulator, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Hospital]:
    yield from hospital_on(request.param, sim, tmp_path_factory, workflows="frontdesk,billing")


def system(h: Hospital, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = h.fhir.handle(FhirRequest(method, path, resource=body, headers={"content-type": "application/fhir+json"},
                                     access=as_system("test data")))
    assert resp.status in (200, 201), resp.resource
    assert resp.resource is not None
    return resp.resource


def received(sim: Simulator, hospital: Hospital, data: dict[str, Any], hi_types: list[str], *,
             contexts: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grant ``hi_types`` over the care contexts, pull, and return the statuses and the documents the HIU
    decrypted, each checked valid against the installed IG here too."""
    consent = grant(sim, data, hi_types, **({"careContexts": contexts} if contexts else {}))
    pull = request_data(sim, consent)
    notice = transfer_notice(sim, pull["transactionId"])
    statuses = {s["careContextReference"]: (s["hiStatus"], s["description"])
                for s in notice["statusNotification"]["statusResponses"]}
    documents = sim.http.get("/sim/hiu/received", params={"transactionId": pull["transactionId"]}).json()["documents"]
    for document in documents:
        outcome = hospital.fhir.handle(FhirRequest("POST", "Bundle/$validate", resource=document["bundle"],
                                                   headers={"content-type": "application/fhir+json"},
                                                   access=as_system("test")))
        assert outcome.resource is not None
        errors = [i for i in outcome.resource["issue"] if i["severity"] in ("error", "fatal")]
        assert errors == [], errors
    return statuses, [d["bundle"] for d in documents]


def profile(bundle: dict[str, Any]) -> str:
    return str(bundle["entry"][0]["resource"]["meta"]["profile"][0].rsplit("/", 1)[1])


def test_discovery_finds_a_spelling_variant_through_the_front_desk_index(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    patient = hospital.read(f"Patient/{data['patient']}")
    number = next(i["value"] for i in patient["identifier"] if i["system"] == ABHA_NUMBER_SYSTEM)
    assert any(i["value"].startswith("PT-") for i in patient["identifier"])  # the front desk registered them
    variant = data["name"].replace("Hina", "Heena")  # the index's phonetic match, not an exact one
    found = sim.post("/sim/call", {"path": DISCOVER, "hipId": HIP_ID, "body": {
        "transactionId": str(uuid.uuid4()), "patient": {
            "name": variant, "gender": "F", "yearOfBirth": 1980,
            "verifiedIdentifiers": [{"type": "ABHA_NUMBER", "value": number.replace("-", "")}]}}})
    answer = sim.answer("/user-initiated-linking/v3/patient/care-context/on-discover", found["requestId"])["body"]
    assert "error" not in answer, answer
    assert {g["referenceNumber"] for g in answer["patient"]} == {f"Patient/{data['patient']}"}
    assert answer["matchedBy"] == ["ABHA_NUMBER"]
    stranger = sim.post("/sim/call", {"path": DISCOVER, "hipId": HIP_ID, "body": {
        "transactionId": str(uuid.uuid4()), "patient": {
            "name": "Rajesh Kumar", "gender": "F", "yearOfBirth": 1979,
            "verifiedIdentifiers": [{"type": "ABHA_NUMBER", "value": number.replace("-", "")}]}}})
    miss = sim.answer("/user-initiated-linking/v3/patient/care-context/on-discover", stranger["requestId"])["body"]
    assert miss["error"]["code"] == "ABDM-1010"  # the number matches, the person does not


def test_wellness_records_carry_vitals_and_body_measurements(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    subject, encounter = {"reference": f"Patient/{data['patient']}"}, {"reference": data["e1"]}
    for code, display, value, unit in (("8867-4", "Heart rate", 72, "/min"), ("29463-7", "Body weight", 61, "kg")):
        hospital.create({"resourceType": "Observation", "status": "final", "category": [VITALS],
                         "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
                         "subject": subject, "encounter": encounter, "effectiveDateTime": "2024-03-01T10:05:00+05:30",
                         "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                           "code": unit}})
    statuses, documents = received(sim, hospital, data, ["WellnessRecord"])
    assert statuses[data["e1"]] == ("DELIVERED", "Delivered")
    assert [profile(d) for d in documents] == ["WellnessRecord"]
    composition = documents[0]["entry"][0]["resource"]
    assert composition["type"] == {"text": "Wellness Record"}
    sections = {s["title"]: len(s["entry"]) for s in composition["section"]}
    assert sections == {"Vital Signs": 1, "Body Measurement": 1, "Other Observations": 1}  # + the temperature
    assert "Paracetamol" not in str(documents[0])


def test_discharge_summaries_are_valid_records(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    subject = {"reference": f"Patient/{data['patient']}"}
    admission = hospital.create({"resourceType": "Encounter", "status": "finished", "class": {
        "system": ACT, "code": "IMP"}, "subject": subject, "type": [{"text": "Medical ward"}],
        "period": {"start": "2024-05-02T09:00:00+05:30", "end": "2024-05-06T11:00:00+05:30"}})
    ref = {"reference": f"Encounter/{admission}"}
    hospital.create({"resourceType": "Condition", "subject": subject, "encounter": ref,
                     "code": {"text": "Dengue fever"}, "recordedDate": "2024-05-02"})
    doctor = hospital.create({"resourceType": "Practitioner", "name": [{"prefix": ["Dr."], "given": ["Asha"]}],
                              "identifier": [{"system": "https://doctor.ndhm.gov.in", "value": "22-1521-3828-3227"}]})
    hospital.create({"resourceType": "MedicationRequest", "status": "completed", "intent": "order", "subject": subject,
                     "encounter": ref, "medicationCodeableConcept": {"text": "Paracetamol 650 mg"},
                     "authoredOn": "2024-05-02", "requester": {"reference": f"Practitioner/{doctor}"},
                     "dosageInstruction": [{"text": "One tablet every six hours for three days"}]})
    statuses, documents = received(sim, hospital, data, ["DischargeSummary"], contexts=[f"Encounter/{admission}",
                                                                                        data["e1"]])
    assert statuses == {f"Encounter/{admission}": ("DELIVERED", "Delivered"),
                        data["e1"]: ("ERRORED", "No records of the consented types and dates")}  # E1 is a visit
    assert [profile(d) for d in documents] == ["DischargeSummaryRecord"]
    titles = [s["title"] for s in documents[0]["entry"][0]["resource"]["section"]]
    assert titles == ["Chief complaint section", "Medication history section"]
    assert "Fever" not in {e["resource"].get("code", {}).get("text") for e in documents[0]["entry"]}  # E1's


def test_health_documents_are_valid_records(hospital: Hospital, sim: Simulator) -> None:
    data = visit_data(hospital)
    report = {"system": "http://snomed.info/sct", "code": "4241000179101", "display": "Laboratory report"}
    document = hospital.create({
        "resourceType": "DocumentReference", "status": "current",
        "subject": {"reference": f"Patient/{data['patient']}"}, "type": {"coding": [report], "text": "Outside lab"},
        "date": "2024-06-01T08:00:00+05:30", "description": "Thyroid profile from an outside lab",
        "content": [{"attachment": {"contentType": "application/pdf", "language": "en-IN", "title": "Thyroid profile",
                                    "data": base64.b64encode(b"%PDF-1.4 thyroid").decode()}}]})
    statuses, documents = received(sim, hospital, data, ["HealthDocumentRecord"],
                                   contexts=[f"DocumentReference/{document}"])
    assert statuses == {f"DocumentReference/{document}": ("DELIVERED", "Delivered")}
    assert [profile(d) for d in documents] == ["HealthDocumentRecord"]
    attached = next(e["resource"] for e in documents[0]["entry"]
                    if e["resource"]["resourceType"] == "DocumentReference")
    assert base64.b64decode(attached["content"][0]["attachment"]["data"]) == b"%PDF-1.4 thyroid"


def test_invoice_records_come_from_the_billing_workflow(hospital: Hospital, sim: Simulator) -> None:
    system(hospital, "POST", "", orjson.loads(PRICELIST.read_bytes()))  # the price list (idempotent)
    data = visit_data(hospital)
    subject = {"reference": f"Patient/{data['patient']}"}
    visit = hospital.create({"resourceType": "Encounter", "status": "finished", "class": {"system": ACT, "code": "AMB"},
                             "subject": subject, "period": {"start": "2024-07-01T09:00:00+05:30",
                                                            "end": "2024-07-01T09:30:00+05:30"}})
    hospital.create({"resourceType": "DiagnosticReport", "status": "final", "subject": subject,
                     "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
                     "encounter": {"reference": f"Encounter/{visit}"}})
    charges = system(hospital, "POST", f"Encounter/{visit}/$charge", {"resourceType": "Parameters"})
    items = [e["resource"] for e in charges["entry"]]
    assert items
    invoice = system(hospital, "POST", "Invoice", {
        "resourceType": "Invoice", "status": "issued", "subject": subject, "date": "2024-07-01T10:00:00+05:30",
        "lineItem": [{"chargeItemReference": {"reference": f"ChargeItem/{c['id']}"}} for c in items]})
    system(hospital, "POST", "PaymentReconciliation", {
        "resourceType": "PaymentReconciliation", "status": "active",
        "paymentAmount": {"value": invoice["totalGross"]["value"], "currency": "INR"},
        "detail": [{"type": {"coding": [{"code": "payment"}]}, "request": {"reference": f"Invoice/{invoice['id']}"}}]})
    assert hospital.read(f"Invoice/{invoice['id']}")["status"] == "balanced"  # paid in full
    statuses, documents = received(sim, hospital, data, ["Invoice"], contexts=[f"Encounter/{visit}", data["e1"]])
    assert statuses[f"Encounter/{visit}"] == ("DELIVERED", "Delivered")
    assert statuses[data["e1"]][0] == "ERRORED"  # nothing billed for E1
    assert [profile(d) for d in documents] == ["InvoiceRecord"]
    entries = [e["resource"] for e in documents[0]["entry"]]
    sent = next(r for r in entries if r["resourceType"] == "Invoice")
    assert sent["type"]["coding"][0]["code"] == "03"  # OPD: an outpatient visit's invoice
    assert sent["totalGross"] == invoice["totalGross"] and sent["status"] == "balanced"
    assert sent["identifier"][0]["value"] == invoice["id"]
    codes = {c["code"]["coding"][0]["display"] for line in sent["lineItem"] for c in line["priceComponent"]}
    assert "Rate" in codes
    sent_items = [r for r in entries if r["resourceType"] == "ChargeItem"]
    assert len(sent_items) == len(items)
    assert {i["code"]["coding"][0]["system"] for i in sent_items} == {
        "https://nrces.in/ndhm/fhir/r4/CodeSystem/ndhm-billing-codes"}
    assert all("productCodeableConcept" in i or "productReference" in i for i in sent_items)
