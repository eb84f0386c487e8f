"""Medication safety and pharmacy stock (issue 18 items 1-2; docs/workflows/pharmacy.md), through HTTP with real
tokens on both databases: who prescribes, the 30-day validity, allergy / duplicate-therapy / interaction checks
with DetectedIssues and a doctor's override, a replaceable interaction table, receipts and first-expiry-first-out
dispenses, expired batches, prescriptions' limits, the read-only ledger, alerts; on PostgreSQL, concurrent
dispenses of the last units with real threads (exactly one wins)."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.validation.resource import validate_resource
from fhir_server.workflows.pharmacy.alerts import ALERT_FLAG
from fhir_server.workflows.pharmacy.common import (
    ALERT_KEY,
    DISPENSED_BATCH,
    EXT_BALANCE,
    EXT_QUANTITY,
    OVERRIDE,
    PHARMACY,
    STOCK_KEY,
)
from fhir_server.workflows.pharmacy.knowledge import DATA
from fhir_server.workflows.rules import RULE_SYSTEM
from tests.conftest import Backend
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}
RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
SCOPE = "user/*.cruds"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    for smart in smart_server(backend, workflows="pharmacy", audit_enabled=True):
        # one backend token for seeding, not a new client and token per call
        smart.as_admin = functools.partial(_as, smart, smart.system_token("system/*.cruds"))  # type: ignore[method-assign]
        yield smart


def _as(smart: Smart, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return smart.fhir(method, path, token, **kw)


@pytest.fixture(scope="module")
def ward(smart: Smart) -> dict[str, Any]:
    smart.backend.truncate()
    doctor = _create(smart, {"resourceType": "Practitioner", "name": [{"family": "House"}]})["id"]
    org = _create(smart, {"resourceType": "Organization", "name": "Pharmacy department"})["id"]
    store = _create(smart, {"resourceType": "Location", "name": "Main pharmacy store",
                            "managingOrganization": {"reference": f"Organization/{org}"}})["id"]

    def token(role: str, fhir_user: str | None = None) -> str:
        return str(_user_token(smart, role, SCOPE, fhir_user=fhir_user)["access_token"])

    return {"doctor": token("doctor", f"Practitioner/{doctor}"), "doctor_ref": f"Practitioner/{doctor}",
            "nurse": token("nurse"), "pharmacist": token("pharmacist"), "store": store, "org": org}


def _create(smart: Smart, resource: dict[str, Any]) -> dict[str, Any]:
    r = smart.as_admin("POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _post(smart: Smart, token: str, resource: dict[str, Any]) -> httpx.Response:
    return smart.fhir("POST", resource["resourceType"], token, content=orjson.dumps(resource), headers=JSON)


def _put(smart: Smart, token: str, resource: dict[str, Any]) -> httpx.Response:
    return smart.fhir("PUT", f"{resource['resourceType']}/{resource['id']}", token, content=orjson.dumps(resource),
                      headers=JSON)


def _rules(r: httpx.Response) -> list[str]:
    return [c["code"] for i in r.json().get("issue", []) for c in (i.get("details") or {}).get("coding", [])
            if c.get("system") == RULE_SYSTEM]


def _search(smart: Smart, path: str) -> list[dict[str, Any]]:
    r = smart.as_admin("GET", path)
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode") == "match"]


def _patient(smart: Smart) -> str:
    return str(_create(smart, {"resourceType": "Patient", "name": [{"family": f"P-{uuid.uuid4().hex[:6]}"}]})["id"])


def _order(patient: str, system: str, code: str, display: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "medicationCodeableConcept": {"coding": [{"system": system, "code": code, "display": display}]},
            "dispenseRequest": {"quantity": {"value": 20, "unit": "tablet"}}, **extra}


def _day(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


# --- item 1: prescribing ------------------------------------------------------------------------------------------

def test_only_doctors_prescribe_and_a_prescription_is_valid_30_days(smart: Smart, ward: dict[str, Any]) -> None:
    pid = _patient(smart)
    r = _post(smart, ward["nurse"], _order(pid, RX, "161", "acetaminophen"))  # the role may create, the rule not
    assert r.status_code == 403, r.text
    assert _rules(r) == ["prescriber-not-doctor"]
    r = _post(smart, ward["pharmacist"], _order(pid, RX, "161", "acetaminophen"))  # the role table already says no
    assert r.status_code == 403, r.text
    r = _post(smart, ward["doctor"], _order(pid, RX, "161", "acetaminophen"))
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["requester"] == {"reference": ward["doctor_ref"]}
    period = made["dispenseRequest"]["validityPeriod"]
    start = datetime.fromisoformat(period["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(period["end"].replace("Z", "+00:00"))
    assert end - start == timedelta(days=30)
    # a pharmacist may complete it (status) but not change what it prescribes
    r = _put(smart, ward["pharmacist"], {**made, "status": "completed"})
    assert r.status_code == 200, r.text
    r = _put(smart, ward["pharmacist"], {**r.json(), "dosageInstruction": [{"text": "twice daily"}]})
    assert r.status_code == 403 and _rules(r) == ["prescriber-not-doctor"], r.text
    # only a doctor overrides a safety alert
    r = _put(smart, ward["pharmacist"], {**made, "extension": [{"url": OVERRIDE, "valueString": "I know best"}]})
    assert r.status_code == 403 and _rules(r) == ["medication-override-not-doctor"], r.text
    # a backend service (an e-prescribing interface) names the prescribing doctor
    r = smart.as_admin("POST", "MedicationRequest", content=orjson.dumps(_order(pid, RX, "7052", "morphine")),
                       headers=JSON)
    assert r.status_code == 422 and _rules(r) == ["prescription-requester"], r.text
    r = smart.as_admin("POST", "MedicationRequest", content=orjson.dumps(
        _order(pid, RX, "7052", "morphine", requester={"reference": ward["doctor_ref"]})), headers=JSON)
    assert r.status_code == 201, r.text
    # malformed content is the validator's 400, never a 500 from the rules
    r = _post(smart, ward["doctor"], _order(pid, RX, "161", "acetaminophen", dispenseRequest={"validityPeriod": "x"}))
    assert r.status_code == 400, r.text
    # longer than 30 days: refused
    r = _post(smart, ward["doctor"], _order(pid, RX, "161", "acetaminophen", dispenseRequest={
        "validityPeriod": {"start": _day(0), "end": _day(45)}}))
    assert r.status_code == 422, r.text
    assert _rules(r) == ["prescription-validity"]
    assert r.json()["issue"][0]["expression"] == ["MedicationRequest.dispenseRequest.validityPeriod.end"]


def test_allergy_class_blocks_unless_a_doctor_overrides_with_a_reason(smart: Smart, ward: dict[str, Any]) -> None:
    pid = _patient(smart)
    allergy = _create(smart, {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{pid}"},
                              "criticality": "high",
                              "code": {"coding": [{"system": ATC, "code": "J01C", "display": "Penicillins"}]}})
    amoxicillin = _order(pid, RX, "723", "amoxicillin")
    r = _post(smart, ward["doctor"], amoxicillin)
    assert r.status_code == 409, r.text
    assert _rules(r) == ["medication-allergy"]
    assert f"AllergyIntolerance/{allergy['id']}" in r.json()["issue"][0]["diagnostics"]
    assert r.json()["issue"][0]["expression"] == ["MedicationRequest.medicationCodeableConcept"]
    assert _search(smart, f"DetectedIssue?patient={pid}") == []  # nothing half-written
    # an override needs a reason, and a doctor
    r = _post(smart, ward["doctor"], {**amoxicillin, "extension": [{"url": OVERRIDE, "valueString": " "}]})
    assert r.status_code == 422 and _rules(r) == ["medication-override-reason"], r.text
    r = _post(smart, ward["doctor"], {**amoxicillin, "extension": [
        {"url": OVERRIDE, "valueString": "tolerated amoxicillin in 2024 under observation"}]})
    assert r.status_code == 201, r.text
    request = r.json()
    issues = _search(smart, f"DetectedIssue?implicated=MedicationRequest/{request['id']}")
    assert len(issues) == 1, issues
    issue = issues[0]
    assert issue["severity"] == "high" and issue["code"]["coding"][0]["code"] == "ALGY"
    assert {"reference": f"AllergyIntolerance/{allergy['id']}"} in issue["implicated"]
    assert issue["mitigation"][0]["action"]["text"] == "tolerated amoxicillin in 2024 under observation"
    assert issue["mitigation"][0]["author"] == {"reference": ward["doctor_ref"]}
    # a refuted allergy is no allergy
    other = _patient(smart)
    _create(smart, {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{other}"},
                    "verificationStatus": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                        "code": "refuted"}]},
                    "code": {"coding": [{"system": RX, "code": "723"}]}})
    r = _post(smart, ward["doctor"], _order(other, RX, "723", "amoxicillin"))
    assert r.status_code == 201, r.text
    assert _search(smart, f"DetectedIssue?patient={other}") == []


def test_allergy_to_the_substance_by_rxnorm(smart: Smart, ward: dict[str, Any]) -> None:
    pid = _patient(smart)
    _create(smart, {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{pid}"},
                    "code": {"coding": [{"system": RX, "code": "5640", "display": "ibuprofen"}]}})
    r = _post(smart, ward["doctor"], _order(pid, ATC, "M01AE01", "ibuprofen"))  # the same drug coded in ATC
    assert r.status_code == 409 and _rules(r) == ["medication-allergy"], r.text
    r = _post(smart, ward["doctor"], _order(pid, RX, "161", "acetaminophen"))
    assert r.status_code == 201, r.text


def test_interactions_block_high_and_record_moderate(smart: Smart, ward: dict[str, Any]) -> None:
    pid = _patient(smart)
    assert _post(smart, ward["doctor"], _order(pid, RX, "11289", "warfarin")).status_code == 201
    r = _post(smart, ward["doctor"], _order(pid, RX, "5640", "ibuprofen"))
    assert r.status_code == 409, r.text
    assert _rules(r) == ["medication-interaction"] and "DDI-01" in r.json()["issue"][0]["diagnostics"]
    other = _patient(smart)
    simvastatin = _post(smart, ward["doctor"], _order(other, RX, "36567", "simvastatin")).json()
    r = _post(smart, ward["doctor"], _order(other, RX, "703", "amiodarone"))
    assert r.status_code == 201, r.text
    issues = _search(smart, f"DetectedIssue?implicated=MedicationRequest/{r.json()['id']}")
    assert [(i["severity"], i["code"]["coding"][0]["code"]) for i in issues] == [("moderate", "DRG")]
    assert {"reference": f"MedicationRequest/{simvastatin['id']}"} in issues[0]["implicated"]


def test_duplicate_therapy_same_substance_blocks_same_class_warns(smart: Smart, ward: dict[str, Any]) -> None:
    pid = _patient(smart)
    assert _post(smart, ward["doctor"], _order(pid, RX, "5640", "ibuprofen")).status_code == 201
    r = _post(smart, ward["doctor"], _order(pid, RX, "5640", "ibuprofen"))
    assert r.status_code == 409 and _rules(r) == ["medication-duplicate-therapy"], r.text
    r = _post(smart, ward["doctor"], _order(pid, RX, "7258", "naproxen"))
    assert r.status_code == 201, r.text
    issues = _search(smart, f"DetectedIssue?implicated=MedicationRequest/{r.json()['id']}")
    assert [(i["severity"], i["code"]["coding"][0]["code"]) for i in issues] == [("moderate", "DUPTHPY")]
    # a stopped prescription is not current therapy
    other = _patient(smart)
    first = _post(smart, ward["doctor"], _order(other, RX, "5640", "ibuprofen")).json()
    assert _put(smart, ward["doctor"], {**first, "status": "stopped"}).status_code == 200
    assert _post(smart, ward["doctor"], _order(other, RX, "5640", "ibuprofen")).status_code == 201


def test_the_interaction_table_is_replaceable_data(smart: Smart, ward: dict[str, Any]) -> None:
    pid = _patient(smart)
    assert _post(smart, ward["doctor"], _order(pid, RX, "6809", "metformin")).status_code == 201
    assert _post(smart, ward["doctor"], _order(pid, RX, "7052", "morphine")).status_code == 201  # no pair shipped
    table = _create(smart, {
        "resourceType": "ConceptMap", "url": "https://fhir-server.dev/ConceptMap/drug-interaction", "status": "active",
        "group": [{"source": ATC, "target": ATC, "element": [{"code": "A10BA02", "target": [{
            "code": "N02BE01", "equivalence": "relatedto", "product": [{
                "property": "https://fhir-server.dev/CodeSystem/drug-interaction",
                "system": "https://fhir-server.dev/CodeSystem/drug-interaction", "value": "DDI-01"}]}]}]}]})
    try:
        r = _post(smart, ward["doctor"], _order(pid, RX, "161", "acetaminophen"))
        assert r.status_code == 409 and _rules(r) == ["medication-interaction"], r.text
        other = _patient(smart)  # and the shipped pairs are replaced, not added to
        assert _post(smart, ward["doctor"], _order(other, RX, "11289", "warfarin")).status_code == 201
        assert _post(smart, ward["doctor"], _order(other, RX, "5640", "ibuprofen")).status_code == 201
    finally:
        assert smart.as_admin("DELETE", f"ConceptMap/{table['id']}").status_code in (200, 204)
    assert _post(smart, ward["doctor"], _order(_patient(smart), RX, "161", "acetaminophen")).status_code == 201


def test_the_shipped_tables_are_valid_r4() -> None:
    for name in ("medication-atc.json", "drug-interaction-codesystem.json", "drug-interaction-conceptmap.json"):
        doc = orjson.loads((DATA / name).read_bytes())
        assert validate_resource(doc) == [], name
    pairs = orjson.loads((DATA / "drug-interaction-conceptmap.json").read_bytes())["group"][0]["element"]
    assert sum(len(e["target"]) for e in pairs) == 35


def test_a_refused_prescription_rolls_back_its_transaction(smart: Smart, ward: dict[str, Any]) -> None:
    """The check sees an allergy written earlier in the same transaction; the 409 leaves nothing behind."""
    family = f"T-{uuid.uuid4().hex[:8]}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5f6b1c1e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "name": [{"family": family}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "AllergyIntolerance",
                      "patient": {"reference": "urn:uuid:5f6b1c1e-0000-4000-8000-000000000001"},
                      "code": {"coding": [{"system": RX, "code": "7984", "display": "penicillin V"}]}},
         "request": {"method": "POST", "url": "AllergyIntolerance"}},
        {"resource": _order("x", RX, "7984", "penicillin V") | {
            "subject": {"reference": "urn:uuid:5f6b1c1e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "MedicationRequest"}}]}
    r = smart.fhir("POST", "", ward["doctor"], content=orjson.dumps(bundle), headers=JSON)
    assert r.status_code == 409 and _rules(r) == ["medication-allergy"], r.text
    assert _search(smart, f"Patient?family={family}") == []


# --- item 2: stock ---------------------------------------------------------------------------------------------------

def _batch(smart: Smart, code: str, display: str, lot: str, expires_in_days: int) -> str:
    return str(_create(smart, {"resourceType": "Medication",
                               "code": {"coding": [{"system": RX, "code": code, "display": display}]},
                               "batch": {"lotNumber": lot, "expirationDate": _day(expires_in_days)}})["id"])


def _receive(smart: Smart, token: str, batch: str, quantity: float, store: str) -> httpx.Response:
    return _post(smart, token, {"resourceType": "SupplyDelivery", "status": "completed",
                                "suppliedItem": {"quantity": {"value": quantity, "unit": "tablet"},
                                                 "itemReference": {"reference": f"Medication/{batch}"}},
                                "destination": {"reference": f"Location/{store}"}})


def _stock(smart: Smart, store: str, batch: str) -> float:
    found = _search(smart, f"Basic?identifier={STOCK_KEY}|Location/{store}/Medication/{batch}")
    if not found:
        return 0.0
    ext = next(e for e in found[0]["extension"] if e["url"] == EXT_QUANTITY)
    return float(ext["valueQuantity"]["value"])


def _prescribe(smart: Smart, ward: dict[str, Any], patient: str, code: str, display: str, quantity: float,
               **extra: Any) -> str:
    order = _order(patient, RX, code, display, **extra)
    order.setdefault("dispenseRequest", {})["quantity"] = {"value": quantity, "unit": "tablet"}
    r = _post(smart, ward["doctor"], order)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _dispense(smart: Smart, token: str, prescription: str, patient: str, quantity: float, store: str, *,
              code: str | None = None, batch: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"resourceType": "MedicationDispense", "status": "completed",
                            "authorizingPrescription": [{"reference": f"MedicationRequest/{prescription}"}],
                            "quantity": {"value": quantity, "unit": "tablet"},
                            "location": {"reference": f"Location/{store}"}}
    if patient:  # else the server takes the prescription's
        body["subject"] = {"reference": f"Patient/{patient}"}
    if batch:
        body["medicationReference"] = {"reference": f"Medication/{batch}"}
    else:
        body["medicationCodeableConcept"] = {"coding": [{"system": RX, "code": code}]}
    return _post(smart, token, body)


def _taken(dispense: dict[str, Any]) -> list[tuple[str, float]]:
    out = []
    for ext in dispense.get("extension", []):
        if ext["url"] == DISPENSED_BATCH:
            parts = {p["url"]: p for p in ext["extension"]}
            out.append((parts["batch"]["valueReference"]["reference"], float(parts["quantity"]["valueDecimal"])))
    return out


def _flags(smart: Smart, code: str, subject: str) -> list[dict[str, Any]]:
    """Active pharmacy alerts on a subject (R4 Flag has no code or status search parameter)."""
    return [f for f in _search(smart, f"Flag?subject={subject}&identifier={ALERT_KEY}|")
            if f["status"] == "active" and f["code"]["coding"][0]["code"] == code]


def test_receipts_and_first_expiry_first_out_dispensing(smart: Smart, ward: dict[str, Any]) -> None:
    store, pharmacist = ward["store"], ward["pharmacist"]
    late = _batch(smart, "2231", "cephalexin 500 mg capsule", "LATE-1", 400)
    soon = _batch(smart, "2231", "cephalexin 500 mg capsule", "SOON-1", 60)
    r = _receive(smart, pharmacist, late, 30, store)
    assert r.status_code == 201, r.text
    r = _receive(smart, pharmacist, soon, 5, store)
    assert r.status_code == 201, r.text
    assert (_stock(smart, store, late), _stock(smart, store, soon)) == (30, 5)
    # the batch expiring within 90 days raised a Flag and a Communication for the notification channel
    flags = _flags(smart, "expiring-stock", f"Medication/{soon}")
    assert len(flags) == 1 and "SOON-1" in flags[0]["code"]["text"]
    messages = _search(smart, f"Communication?identifier={ALERT_FLAG}|Flag/{flags[0]['id']}")
    assert len(messages) == 1 and messages[0]["status"] == "preparation"
    assert messages[0]["recipient"] == [{"reference": f"Organization/{ward['org']}"}]
    assert _flags(smart, "expiring-stock", f"Medication/{late}") == []

    pid = _patient(smart)
    prescription = _prescribe(smart, ward, pid, "2231", "cephalexin", 12)
    r = _dispense(smart, pharmacist, prescription, pid, 8, store, code="2231")
    assert r.status_code == 201, r.text
    dispense = r.json()
    assert _taken(dispense) == [(f"Medication/{soon}", 5), (f"Medication/{late}", 3)]  # earliest expiry first
    assert (_stock(smart, store, late), _stock(smart, store, soon)) == (27, 0)
    assert _flags(smart, "expiring-stock", f"Medication/{soon}") == []  # nothing left of it: alert closed
    # every movement is a record: the receipts and the two batches taken, with the balance after
    movements = _search(smart, f"Basic?code={PHARMACY}|stock-movement&subject=Medication/{soon}")
    changes = sorted(float(next(e for e in m["extension"] if e["url"] == EXT_QUANTITY)["valueQuantity"]["value"])
                     for m in movements)
    assert changes == [-5, 5]
    assert all(float(next(e for e in m["extension"] if e["url"] == EXT_BALANCE)["valueQuantity"]["value"]) >= 0
               for m in movements)
    # ... and audited like every write
    audit = _search(smart, f"AuditEvent?entity=MedicationDispense/{dispense['id']}")
    named = {e["what"]["reference"].split("/")[0] for a in audit for e in a["entity"] if "what" in e}
    assert {"MedicationDispense", "Basic"} <= named, audit  # the dispense, its stock records and movements
    # partial dispensing: the rest of the prescription later, never more than prescribed
    assert smart.as_admin("GET", f"MedicationRequest/{prescription}").json()["status"] == "active"  # 8 of 12
    r = _dispense(smart, pharmacist, prescription, pid, 5, store, code="2231")
    assert r.status_code == 409 and _rules(r) == ["dispense-exceeds-prescription"], r.text
    r = _dispense(smart, pharmacist, prescription, "", 4, store, code="2231")
    assert r.status_code == 201, r.text
    assert _stock(smart, store, late) == 23
    # 8 + 4 of 12: all given, the prescription is completed
    assert smart.as_admin("GET", f"MedicationRequest/{prescription}").json()["status"] == "completed"
    assert r.json()["subject"] == {"reference": f"Patient/{pid}"}
    # a completed dispense is final; entered-in-error puts its stock back
    r = _put(smart, pharmacist, {**dispense, "quantity": {"value": 1, "unit": "tablet"}})
    assert r.status_code == 409 and _rules(r) == ["dispense-completed"], r.text
    assert smart.fhir("DELETE", f"MedicationDispense/{dispense['id']}", pharmacist).status_code in (403, 409)
    r = _put(smart, pharmacist, {**dispense, "status": "entered-in-error"})
    assert r.status_code == 200, r.text
    assert (_stock(smart, store, late), _stock(smart, store, soon)) == (26, 5)
    assert _taken(r.json()) == _taken(dispense)
    r = _put(smart, pharmacist, {**r.json(), "status": "completed"})  # no second taking of the same dispense
    assert r.status_code == 409 and _rules(r) == ["dispense-completed"], r.text


def test_stock_refusals(smart: Smart, ward: dict[str, Any]) -> None:
    store, pharmacist = ward["store"], ward["pharmacist"]
    batch = _batch(smart, "2551", "ciprofloxacin 500 mg tablet", "CIP-1", 300)
    recalled = _batch(smart, "2551", "ciprofloxacin 500 mg tablet", "CIP-OLD", 100)
    assert _receive(smart, pharmacist, batch, 6, store).status_code == 201
    assert _receive(smart, pharmacist, recalled, 50, store).status_code == 201
    # the recalled lot's expiry is corrected to the past: it stays on the shelf but is never dispensed
    med = smart.as_admin("GET", f"Medication/{recalled}").json()
    r = smart.as_admin("PUT", f"Medication/{recalled}", content=orjson.dumps(
        {**med, "batch": {"lotNumber": "CIP-OLD", "expirationDate": _day(-1)}}), headers=JSON)
    assert r.status_code == 200, r.text
    pid = _patient(smart)
    prescription = _prescribe(smart, ward, pid, "2551", "ciprofloxacin", 60)
    r = _dispense(smart, pharmacist, prescription, pid, 1, store, batch=recalled)
    assert r.status_code == 409 and _rules(r) == ["batch-expired"], r.text
    r = _dispense(smart, pharmacist, prescription, pid, 7, store, code="2551")  # 6 unexpired, 50 expired
    assert r.status_code == 409 and _rules(r) == ["insufficient-stock"], r.text
    assert "6 in stock" in r.json()["issue"][0]["diagnostics"]
    r = _dispense(smart, pharmacist, prescription, pid, 6, store, code="2551")
    assert r.status_code == 201 and _taken(r.json()) == [(f"Medication/{batch}", 6)], r.text
    assert (_stock(smart, store, batch), _stock(smart, store, recalled)) == (0, 50)
    # an expired batch is not received
    old = _batch(smart, "2551", "ciprofloxacin 500 mg tablet", "CIP-X", -3)
    r = _receive(smart, pharmacist, old, 10, store)
    assert r.status_code == 422 and _rules(r) == ["batch-expired"], r.text
    r = _post(smart, pharmacist, {"resourceType": "SupplyDelivery", "status": "completed",
                                  "suppliedItem": {"quantity": {"value": 5}},
                                  "destination": {"reference": f"Location/{store}"}})
    assert r.status_code == 422 and _rules(r) == ["receipt-batch"], r.text
    # prescriptions: needed, active, within validity, this patient's
    r = _post(smart, pharmacist, {"resourceType": "MedicationDispense", "status": "completed",
                                  "medicationCodeableConcept": {"coding": [{"system": RX, "code": "2551"}]},
                                  "quantity": {"value": 1}, "location": {"reference": f"Location/{store}"}})
    assert r.status_code == 422 and _rules(r) == ["dispense-prescription"], r.text
    r = _post(smart, pharmacist, {"resourceType": "MedicationDispense", "status": "completed",
                                  "authorizingPrescription": {"reference": f"MedicationRequest/{prescription}"},
                                  "quantity": {"value": 1}, "location": {"reference": f"Location/{store}"}})
    assert r.status_code in (400, 422), r.text
    late_patient = _patient(smart)
    expired = _prescribe(smart, ward, late_patient, "2551", "ciprofloxacin", 10, dispenseRequest={
        "validityPeriod": {"start": _day(-40), "end": _day(-11)}})
    assert _receive(smart, pharmacist, batch, 3, store).status_code == 201
    r = _dispense(smart, pharmacist, expired, late_patient, 1, store, code="2551")
    assert r.status_code == 409 and _rules(r) == ["prescription-expired"], r.text
    r = _dispense(smart, pharmacist, prescription, _patient(smart), 1, store, code="2551")
    assert r.status_code == 422 and _rules(r) == ["dispense-subject"], r.text
    stopped = smart.fhir("GET", f"MedicationRequest/{prescription}", ward["doctor"]).json()
    assert _put(smart, ward["doctor"], {**stopped, "status": "stopped"}).status_code == 200
    r = _dispense(smart, pharmacist, prescription, pid, 1, store, code="2551")
    assert r.status_code == 409 and _rules(r) == ["prescription-not-active"], r.text
    # the ledger is the server's: no hand edits, even by an administrator
    record = _search(smart, f"Basic?identifier={STOCK_KEY}|Location/{store}/Medication/{batch}")[0]
    edited = {**record, "extension": [e if e["url"] != EXT_QUANTITY else {**e, "valueQuantity": {"value": 999}}
                                      for e in record["extension"]]}
    assert _put(smart, pharmacist, edited).status_code == 403  # the role writes no Basic at all
    for r in (_put(smart, ward["doctor"], edited), smart.as_admin("PUT", f"Basic/{record['id']}",
                                                               content=orjson.dumps(edited), headers=JSON)):
        assert r.status_code == 403 and _rules(r) == ["stock-ledger-read-only"], r.text
    assert smart.as_admin("DELETE", f"Basic/{record['id']}").status_code == 403
    assert _stock(smart, store, batch) == 3


def test_low_stock_alert_and_the_stock_check_operation(smart: Smart, ward: dict[str, Any]) -> None:
    store, pharmacist = ward["store"], ward["pharmacist"]
    batch = _batch(smart, "7646", "omeprazole 20 mg capsule", "OME-1", 500)
    assert _receive(smart, pharmacist, batch, 12, store).status_code == 201
    key = f"Location/{store}"
    low = [f for f in _flags(smart, "low-stock", key) if "omeprazole" in f["code"]["text"]]
    assert low == []  # 12 >= reorder level 10
    pid = _patient(smart)
    prescription = _prescribe(smart, ward, pid, "7646", "omeprazole", 28)
    assert _dispense(smart, pharmacist, prescription, pid, 4, store, code="7646").status_code == 201
    low = [f for f in _flags(smart, "low-stock", key) if "omeprazole" in f["code"]["text"]]
    assert len(low) == 1 and "8 unexpired left" in low[0]["code"]["text"], low
    assert _search(smart, f"Communication?identifier={ALERT_FLAG}|Flag/{low[0]['id']}")[0]["priority"] == "urgent"
    assert _dispense(smart, pharmacist, prescription, pid, 1, store, code="7646").status_code == 201
    assert len([f for f in _flags(smart, "low-stock", key) if "omeprazole" in f["code"]["text"]]) == 1  # not twice
    assert _receive(smart, pharmacist, batch, 20, store).status_code == 201  # back above the level: closed
    assert [f for f in _flags(smart, "low-stock", key) if "omeprazole" in f["code"]["text"]] == []
    # a second product in the same store, so the check below counts two this test made itself
    other = _batch(smart, "1191", "aspirin 75 mg tablet", "ASP-1", 400)
    assert _receive(smart, pharmacist, other, 30, store).status_code == 201
    body = orjson.dumps({"resourceType": "Parameters", "parameter": []})
    r = smart.fhir("POST", "$pharmacy-stock-check", ward["nurse"], content=body, headers=JSON)
    assert r.status_code == 403 and _rules(r) == ["stock-check-role"], r.text
    r = smart.fhir("POST", "$pharmacy-stock-check", pharmacist, content=body, headers=JSON)
    assert r.status_code == 200, r.text
    counts = {p["name"]: p["valueInteger"] for p in r.json()["parameter"]}
    # other tests' stock may be counted too (the operation checks every store)
    assert counts["checked"] >= 2 and counts["raised"] == 0  # every alert already up to date


def test_concurrent_dispenses_of_the_last_units_one_wins(smart: Smart, ward: dict[str, Any]) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("real concurrency on PostgreSQL (SQLite writers take turns)")
    store, pharmacist = ward["store"], ward["pharmacist"]
    batch = _batch(smart, "6922", "metronidazole 400 mg tablet", "MET-1", 365)
    assert _receive(smart, pharmacist, batch, 3, store).status_code == 201
    orders = []
    for _ in range(6):  # six patients, six prescriptions: only the stock is shared
        pid = _patient(smart)
        orders.append((pid, _prescribe(smart, ward, pid, "6922", "metronidazole", 3)))
    results: list[httpx.Response] = []
    barrier = threading.Barrier(len(orders))

    def run(pid: str, prescription: str) -> None:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            results.append(http.post(f"{smart.base}/MedicationDispense", headers={
                **JSON, "Authorization": f"Bearer {pharmacist}"}, content=orjson.dumps({
                    "resourceType": "MedicationDispense", "status": "completed",
                    "subject": {"reference": f"Patient/{pid}"},
                    "authorizingPrescription": [{"reference": f"MedicationRequest/{prescription}"}],
                    "medicationCodeableConcept": {"coding": [{"system": RX, "code": "6922"}]},
                    "quantity": {"value": 3}, "location": {"reference": f"Location/{store}"}})))

    threads = [threading.Thread(target=run, args=order) for order in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 5, [r.text for r in results]
    assert all(_rules(r) == ["insufficient-stock"] for r in results if r.status_code == 409)
    assert _stock(smart, store, batch) == 0
    assert len(_search(smart, f"Basic?code={PHARMACY}|stock-movement&subject=Medication/{batch}")) == 2
