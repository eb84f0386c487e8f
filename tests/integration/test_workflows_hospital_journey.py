"""Issue 18's "Done means", with every workflow area on (FHIR_WORKFLOWS=all), through HTTP with real tokens of
the right roles, on both databases: a nurse admits the patient to a bed; the doctor orders a stat test; the lab
cannot report before the specimen is collected, then reports a critical potassium (a Flag and a message to
the doctor); the doctor prescribes and the pharmacist dispenses from stock; the nurse moves the patient to
another bed; discharge waits for the signed summary; the billing officer charges the stay, invoices it (the
insurer's claim follows), takes two payments (the invoice is balanced) and the claim follows its response;
and the manager's reports count all of it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.workflows.rules import RULE_SYSTEM
from tests.conftest import Backend
from tests.integration.scheduling_support import Desk
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_workflows_billing import PRICELIST

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
PHYSICAL = "http://terminology.hl7.org/CodeSystem/location-physical-type"
PARACETAMOL = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "161"},
                          {"system": "http://snomed.info/sct", "code": "322236009"}]}
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend, workflows="all")


def _as(smart: Smart, role: str, fhir_user: str | None = None) -> Desk:
    token = _user_token(smart, role, "openid fhirUser user/*.cruds", fhir_user=fhir_user)
    return Desk(smart, str(token["access_token"]))


def _refused(r: httpx.Response, status: int, rule: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["issue"][0]["details"]["coding"][0] == {"system": RULE_SYSTEM, "code": rule}, r.text


def _bed(location: dict[str, Any]) -> str:
    return str(location["operationalStatus"]["code"])


def _figure(desk: Desk, measure: str, code: str) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    r = desk.call("GET", f"Measure/$evaluate-measure?measure={measure}&periodStart={today - timedelta(days=1)}"
                         f"&periodEnd={today + timedelta(days=1)}")
    assert r.status_code == 200, r.text
    return next(g for g in r.json()["group"] if g["code"]["coding"][0]["code"] == code)


def test_order_to_paid_invoice_and_the_dashboard(smart: Smart) -> None:
    admin = Desk(smart, smart.system_token("system/*.cruds"))
    assert admin.call("POST", "", orjson.loads(PRICELIST.read_bytes())).status_code == 200
    org = admin.create({"resourceType": "Organization", "name": "City Hospital"})["id"]
    insurer = admin.create({"resourceType": "Organization", "name": "Star Health"})["id"]
    ward = admin.create({"resourceType": "Location", "name": "Ward 1", "physicalType": {"coding": [
        {"system": PHYSICAL, "code": "wa"}]}})["id"]
    beds = [admin.create({"resourceType": "Location", "name": f"Bed {n}", "physicalType": {"coding": [
        {"system": PHYSICAL, "code": "bd"}]}, "partOf": {"reference": f"Location/{ward}"}})["id"] for n in (1, 2)]
    store = admin.create({"resourceType": "Location", "name": "Pharmacy"})["id"]
    dr = admin.create({"resourceType": "Practitioner", "name": [{"family": "Rao"}]})["id"]
    patient = admin.create({"resourceType": "Patient", "name": [{"family": "Journeyman", "given": ["Ravi"]}],
                            "gender": "male", "birthDate": "1960-05-05"})["id"]
    subject = {"reference": f"Patient/{patient}"}
    admin.create({"resourceType": "Coverage", "status": "active", "beneficiary": subject,
                  "payor": [{"reference": f"Organization/{insurer}"}],
                  "period": {"start": (datetime.now(UTC) - timedelta(days=30)).date().isoformat()}})
    doctor, nurse = _as(smart, "doctor", f"Practitioner/{dr}"), _as(smart, "nurse")
    lab, pharmacist = _as(smart, "lab_technician"), _as(smart, "pharmacist")
    officer, manager = _as(smart, "billing_officer"), _as(smart, "manager")
    batch = pharmacist.create({"resourceType": "Medication", "code": PARACETAMOL, "batch": {
        "lotNumber": "J-1", "expirationDate": (datetime.now(UTC) + timedelta(days=400)).date().isoformat()}})["id"]
    pharmacist.create({"resourceType": "SupplyDelivery", "status": "completed",
                       "destination": {"reference": f"Location/{store}"},
                       "suppliedItem": {"itemReference": {"reference": f"Medication/{batch}"},
                                        "quantity": {"value": 100}}})

    # The nurse admits the patient to bed 1.
    stay = nurse.create({"resourceType": "Encounter", "status": "in-progress", "class": {"system": ACT, "code": "IMP"},
                         "subject": subject, "participant": [{"individual": {"reference": f"Practitioner/{dr}"}}],
                         "location": [{"location": {"reference": f"Location/{beds[0]}"}, "status": "active"}]})
    encounter = {"reference": f"Encounter/{stay['id']}"}
    assert _bed(admin.read(f"Location/{beds[0]}")) == "O"

    # Order -> specimen -> result -> critical flag -> report.
    order = doctor.create({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "stat",
                           "code": {"coding": [{"system": LOINC, "code": "58410-2"}]}, "subject": subject,
                           "encounter": encounter, "requester": {"reference": f"Practitioner/{dr}"},
                           "authoredOn": datetime.now(UTC).isoformat()})
    based_on = [{"reference": f"ServiceRequest/{order['id']}"}]
    potassium = {"resourceType": "Observation", "status": "final", "basedOn": based_on,
                 "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                           "code": "laboratory"}]}],
                 "code": {"coding": [{"system": LOINC, "code": "2823-3"}]}, "subject": subject, "encounter": encounter,
                 "valueQuantity": {"value": 7.1, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}}
    _refused(lab.call("POST", "Observation", potassium), 409, "lab-specimen-not-collected")
    lab.create({"resourceType": "Specimen",
                "identifier": [{"system": "https://hospital.example/barcode", "value": "J42"}],
                "request": [{"reference": f"ServiceRequest/{order['id']}"}], "subject": subject,
                "collection": {"collectedDateTime": datetime.now(UTC).isoformat()}})
    result = lab.create(potassium)
    flags = admin.search(f"Flag?subject=Patient/{patient}")
    assert any(c["code"] == "critical-high" for f in flags for c in f["code"]["coding"]), flags
    told = admin.search(f"Communication?recipient=Practitioner/{dr}")
    assert any("7.1" in p.get("contentString", "") for c in told for p in c.get("payload", [])), told
    lab.create({"resourceType": "DiagnosticReport", "status": "final", "code": order["code"], "subject": subject,
                "encounter": encounter, "basedOn": [{"reference": f"ServiceRequest/{order['id']}"}],
                "result": [{"reference": f"Observation/{result['id']}"}]})
    assert admin.read(f"ServiceRequest/{order['id']}")["status"] == "completed"

    # Prescription -> dispense.
    prescription = doctor.create({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                                  "medicationCodeableConcept": PARACETAMOL, "subject": subject, "encounter": encounter,
                                  "dispenseRequest": {"quantity": {"value": 10, "unit": "tablet"}}})
    copy = {k: v for k, v in prescription.items() if k not in ("id", "meta")}
    assert pharmacist.call("POST", "MedicationRequest", copy).status_code == 403  # only doctors prescribe
    dispense = pharmacist.create({"resourceType": "MedicationDispense", "status": "completed", "subject": subject,
                                  "context": encounter, "medicationCodeableConcept": PARACETAMOL,
                                  "authorizingPrescription": [{"reference": f"MedicationRequest/{prescription['id']}"}],
                                  "quantity": {"value": 10, "unit": "tablet"},
                                  "location": {"reference": f"Location/{store}"}})
    assert any("dispensed-batch" in x["url"] for x in dispense["extension"])

    # Transfer to bed 2, then discharge (only after the signed summary).
    stay = nurse.read(f"Encounter/{stay['id']}")
    stay["location"].append({"location": {"reference": f"Location/{beds[1]}"}, "status": "active"})
    r = nurse.put(stay)
    assert r.status_code == 200, r.text
    stay = r.json()
    assert [_bed(admin.read(f"Location/{b}")) for b in beds] == ["U", "O"]
    _refused(nurse.put({**stay, "status": "finished"}), 409, "ward-discharge-summary-missing")
    now = datetime.now(UTC).isoformat()
    doctor.create({"resourceType": "Composition", "status": "final", "type": {"coding": [{"system": LOINC,
                                                                                         "code": "18842-5"}]},
                   "subject": subject, "encounter": encounter, "date": now, "title": "Discharge summary",
                   "author": [{"reference": f"Practitioner/{dr}"}],
                   "attester": [{"mode": "legal", "time": now, "party": {"reference": f"Practitioner/{dr}"}}]})
    r = nurse.put({**stay, "status": "finished"})
    assert r.status_code == 200, r.text
    assert [_bed(admin.read(f"Location/{b}")) for b in beds] == ["U", "U"]

    # Charge -> invoice (the claim follows) -> payments -> the claim follows its response.
    r = officer.call("POST", f"Encounter/{stay['id']}/$charge", {"resourceType": "Parameters"})
    assert r.status_code == 200, r.text
    items = [e["resource"] for e in r.json()["entry"]]
    assert {i["service"][0]["reference"].split("/")[0] for i in items if i.get("service")} >= {
        "DiagnosticReport", "MedicationDispense"}
    invoice = officer.create({"resourceType": "Invoice", "status": "issued", "subject": subject,
                              "issuer": {"reference": f"Organization/{org}"},
                              "lineItem": [{"chargeItemReference": {"reference": f"ChargeItem/{i['id']}"}}
                                           for i in items]})
    total = invoice["totalGross"]["value"]
    claims = admin.search(f"Claim?patient=Patient/{patient}")
    assert len(claims) == 1 and claims[0]["total"]["value"] == total
    for amount in (100.0, round(total - 100.0, 2)):
        body = {"resourceType": "PaymentReconciliation", "status": "active",
                "paymentAmount": {"value": amount, "currency": "INR"},
                "detail": [{"type": {"coding": [{"code": "payment"}]},
                            "request": {"reference": f"Invoice/{invoice['id']}"}}]}
        assert officer.call("POST", "PaymentReconciliation", body).status_code == 201
    assert admin.read(f"Invoice/{invoice['id']}")["status"] == "balanced"
    officer.create({"resourceType": "ClaimResponse", "status": "active", "outcome": "complete", "use": "claim",
                    "type": claims[0]["type"], "patient": subject, "created": now,
                    "insurer": {"reference": f"Organization/{insurer}"},
                    "request": {"reference": f"Claim/{claims[0]['id']}"}})
    assert any(x["url"].endswith("claim-outcome") for x in admin.read(f"Claim/{claims[0]['id']}")["extension"])

    # The dashboard: the manager's reports reflect the day; a nurse gets none of them.
    assert nurse.call("GET", "Measure/$evaluate-measure?measure=revenue").status_code == 403
    volume = _figure(manager, "lab-turnaround", "lab-volume")
    assert [p["count"] for p in volume["population"]] == [1, 1]
    assert _figure(manager, "lab-turnaround", "lab-turnaround")["population"][0]["count"] == 1
    revenue, collected = _figure(manager, "revenue", "revenue"), _figure(manager, "revenue", "collections")
    assert revenue["population"][0]["count"] == 1 and revenue["measureScore"]["value"] == pytest.approx(total)
    assert collected["measureScore"]["value"] == pytest.approx(total)
    assert _figure(manager, "outstanding-balances", "outstanding")["population"][0]["count"] == 0
    assert _figure(manager, "pharmacy-stock", "stock-value")["population"][0]["count"] == 90
    occupancy = _figure(manager, "bed-occupancy", "bed-occupancy")
    assert occupancy["population"][0]["count"] == 2  # beds; the stay lasted seconds, so ~0 % of two days
    assert _figure(manager, "bed-occupancy", "census")["population"][0]["count"] == 0  # discharged
    work = _figure(manager, "doctor-workload", "workload-encounters")
    assert work["stratifier"][0]["stratum"][0]["value"]["text"] == f"Practitioner/{dr}"
