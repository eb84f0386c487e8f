"""Billing (issue 18 items 6-8) over real HTTP with real tokens, on SQLite and PostgreSQL: charges priced by
the price list, invoices (totals, tax, discounts and their approval, statuses), payments (partial, refunds,
the balance, Idempotency-Key, 50 racing retries on PostgreSQL) and the insured patient's Claim."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_server.workflows.billing.charge import CHARGE_SOURCE
from fhir_server.workflows.billing.claim import CLAIM_OUTCOME
from fhir_server.workflows.rules import RULE_SYSTEM
from tests.conftest import Backend
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}
PRICELIST = Path(__file__).parents[2] / "fhir_server" / "workflows" / "billing" / "pricelist.json"
LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SCOPE = "openid fhirUser user/*.cruds"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    for smart in smart_server(backend, workflows="billing"):
        yield smart
        _ADMIN.pop(id(smart), None)


@pytest.fixture(scope="module")
def hospital(smart: Smart) -> dict[str, str]:
    r = admin(smart, "POST", "", content=PRICELIST.read_bytes(), headers=JSON)
    assert r.status_code == 200, r.text
    officer = make(smart, {"resourceType": "Practitioner", "name": [{"family": "Rao"}]})
    nurse = make(smart, {"resourceType": "Practitioner", "name": [{"family": "Das"}]})
    return {
        "org": make(smart, {"resourceType": "Organization", "name": "City Hospital"}),
        "insurer": make(smart, {"resourceType": "Organization", "name": "Star Health"}),
        "icu": make(smart, {"resourceType": "Location", "name": "ICU bed 1", "type": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "ICU"}]}]}),
        "ward": make(smart, {"resourceType": "Location", "name": "Ward A bed 3"}),
        "officer_ref": f"Practitioner/{officer}",
        "officer": _user_token(smart, "billing_officer", SCOPE, fhir_user=f"Practitioner/{officer}")["access_token"],
        "nurse": _user_token(smart, "nurse", SCOPE, fhir_user=f"Practitioner/{nurse}")["access_token"],
    }


# One seeding token per server (Smart.as_admin signs in a new backend client per call: argon2 each time).
_ADMIN: dict[int, str] = {}


def admin(smart: Smart, method: str, path: str, **kw: Any) -> httpx.Response:
    if id(smart) not in _ADMIN:
        _ADMIN[id(smart)] = smart.system_token("system/*.cruds")
    return smart.fhir(method, path, _ADMIN[id(smart)], **kw)


def make(smart: Smart, resource: dict[str, Any]) -> str:
    r = admin(smart, "POST", resource["resourceType"], content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def call(smart: Smart, token: str, method: str, path: str, body: Any = None, **headers: str) -> httpx.Response:
    return smart.fhir(method, path, token, content=orjson.dumps(body) if body is not None else None,
                      headers={**JSON, **headers})


def refused(r: httpx.Response, status: int, rule: str, expression: str | None = None) -> None:
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert issue["details"]["coding"][0] == {"system": RULE_SYSTEM, "code": rule}, r.text
    if expression is not None:
        assert expression in issue.get("expression", []), r.text


def patient(smart: Smart) -> str:
    return make(smart, {"resourceType": "Patient", "name": [{"family": f"P{uuid.uuid4().hex[:6]}"}]})


def visit(smart: Smart, pid: str, *, lab_code: str = "58410-2") -> str:
    """A finished outpatient visit with a final lab report and 10 paracetamol tablets dispensed."""
    enc = make(smart, {"resourceType": "Encounter", "status": "finished", "class": {"system": ACT, "code": "AMB"},
                       "subject": {"reference": f"Patient/{pid}"},
                       "period": {"start": "2026-12-01T09:00:00Z", "end": "2026-12-01T09:30:00Z"}})
    make(smart, {"resourceType": "DiagnosticReport", "status": "final",
                 "code": {"coding": [{"system": LOINC, "code": lab_code}]},
                 "subject": {"reference": f"Patient/{pid}"}, "encounter": {"reference": f"Encounter/{enc}"}})
    make(smart, {"resourceType": "MedicationDispense", "status": "completed",
                 "medicationCodeableConcept": {"coding": [{"system": SNOMED, "code": "322236009"}]},
                 "subject": {"reference": f"Patient/{pid}"}, "context": {"reference": f"Encounter/{enc}"},
                 "quantity": {"value": 10}})
    return enc


def charge(smart: Smart, token: str, enc: str) -> list[dict[str, Any]]:
    r = call(smart, token, "POST", f"Encounter/{enc}/$charge", {"resourceType": "Parameters"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json()["entry"]]


def invoice_body(pid: str, items: list[dict[str, Any]], org: str | None, **extra: Any) -> dict[str, Any]:
    body = {"resourceType": "Invoice", "status": "draft", "subject": {"reference": f"Patient/{pid}"},
            "lineItem": [{"chargeItemReference": {"reference": f"ChargeItem/{c['id']}"}} for c in items], **extra}
    if org:
        body["issuer"] = {"reference": f"Organization/{org}"}
    return body


def billed_visit(smart: Smart, hospital: dict[str, str], *, status: str = "issued",
                 pid: str | None = None) -> tuple[str, dict[str, Any]]:
    pid = pid or patient(smart)
    items = charge(smart, hospital["officer"], visit(smart, pid))
    r = call(smart, hospital["officer"], "POST", "Invoice", invoice_body(pid, items, hospital["org"], status=status))
    assert r.status_code == 201, r.text
    return pid, r.json()


def payment(invoice: str, value: float, reason: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "PaymentReconciliation", "status": "active",
                            "paymentAmount": {"value": value, "currency": "INR"},
                            "detail": [{"type": {"coding": [{"code": "payment"}]},
                                        "request": {"reference": f"Invoice/{invoice}"}}]}
    if reason:
        body["disposition"] = reason
    return body


def pay(smart: Smart, token: str, invoice: str, value: float, key: str | None = None,
        reason: str | None = None) -> httpx.Response:
    return call(smart, token, "POST", "PaymentReconciliation", payment(invoice, value, reason),
                **({"Idempotency-Key": key} if key else {}))


def read(smart: Smart, path: str) -> dict[str, Any]:
    r = admin(smart, "GET", path)
    assert r.status_code == 200, r.text
    return dict(r.json())


def total(resource: dict[str, Any], name: str) -> float:
    return float(resource[name]["value"])


# --- item 6: charges and invoices ----------------------------------------------------------------------------

def test_charge_is_priced_taxed_rounded_and_idempotent(smart: Smart, hospital: dict[str, str]) -> None:
    pid = patient(smart)
    enc = visit(smart, pid)
    items = charge(smart, hospital["officer"], enc)
    assert sorted(i["identifier"][0]["value"].split("/")[0] for i in items) == \
        ["DiagnosticReport", "Encounter", "MedicationDispense"]
    assert all(i["status"] == "billable" and i["context"]["reference"] == f"Encounter/{enc}" for i in items)
    again = charge(smart, hospital["officer"], enc)  # charging twice charges nothing new
    assert sorted(i["id"] for i in again) == sorted(i["id"] for i in items)
    found = read(smart, f"ChargeItem?context=Encounter/{enc}&_summary=count")
    assert found["total"] == 3
    r = call(smart, hospital["officer"], "POST", "Invoice", invoice_body(pid, items, hospital["org"]))
    assert r.status_code == 201, r.text
    inv = r.json()
    # consultation 500 + 5 % (default) = 525; CBC 350 + 12 % = 392; 10 tablets x 2.50 = 25.00 - 18 % catalogue
    # discount 4.50 = 20.50, + 5 % = 1.025 -> 1.03 (ROUND_HALF_UP; half-even would say 1.02)
    assert total(inv, "totalNet") == 870.50 and total(inv, "totalGross") == 938.53
    tablets = next(line for line in inv["lineItem"] if any(
        c["type"] == "base" and c["factor"] == 10 for c in line["priceComponent"]))
    assert [(c["type"], c["amount"]["value"]) for c in tablets["priceComponent"]] == \
        [("base", 25.0), ("discount", -4.5), ("tax", 1.03)]
    assert {c["type"]: c["amount"]["value"] for c in inv["totalPriceComponent"]} == \
        {"base": 875.0, "discount": -4.5, "tax": 68.03}


def test_wrong_total_refused_right_total_accepted(smart: Smart, hospital: dict[str, str]) -> None:
    pid = patient(smart)
    items = charge(smart, hospital["officer"], visit(smart, pid))
    wrong = invoice_body(pid, items, hospital["org"], totalGross={"value": 938.52, "currency": "INR"})
    refused(call(smart, hospital["officer"], "POST", "Invoice", wrong), 422, "billing-invoice-total",
            "Invoice.totalGross")
    right = invoice_body(pid, items, hospital["org"], totalGross={"value": 938.53, "currency": "INR"},
                         totalNet={"value": 870.5, "currency": "INR"})
    assert call(smart, hospital["officer"], "POST", "Invoice", right).status_code == 201


def test_unpriced_service_charges_nothing(smart: Smart, hospital: dict[str, str]) -> None:
    pid = patient(smart)
    enc = visit(smart, pid, lab_code="0000-0")  # no ChargeItemDefinition prices it
    r = call(smart, hospital["officer"], "POST", f"Encounter/{enc}/$charge", {"resourceType": "Parameters"})
    refused(r, 422, "billing-no-price")
    assert read(smart, f"ChargeItem?context=Encounter/{enc}&_summary=count")["total"] == 0


def test_bed_days_from_location_periods_tax_exempt(smart: Smart, hospital: dict[str, str]) -> None:
    pid = patient(smart)
    enc = make(smart, {"resourceType": "Encounter", "status": "in-progress", "class": {"system": ACT, "code": "IMP"},
                       "subject": {"reference": f"Patient/{pid}"}, "location": [
                           {"location": {"reference": f"Location/{hospital['icu']}"},
                            "period": {"start": "2026-12-01T22:00:00Z", "end": "2026-12-03T10:00:00Z"}},
                           {"location": {"reference": f"Location/{hospital['ward']}"},
                            "period": {"start": "2026-12-03T10:00:00Z", "end": "2026-12-04T09:00:00Z"}},
                           {"location": {"reference": f"Location/{hospital['ward']}"},
                            "period": {"start": "2026-12-04T09:00:00Z"}}]})  # still there: not yet
    items = charge(smart, hospital["officer"], enc)
    assert sorted((i["code"]["coding"][0]["code"], i["quantity"]["value"]) for i in items) == \
        [("ICU", 2), ("bed-day", 1)]
    r = call(smart, hospital["officer"], "POST", "Invoice", invoice_body(pid, items, hospital["org"]))
    assert r.status_code == 201, r.text
    assert total(r.json(), "totalGross") == 12000.0  # 2 x 5000 + 2000, no tax
    assert all(any(c.get("code", {}).get("coding", [{}])[0].get("code") == "tax-exempt"
                   for c in line["priceComponent"]) for line in r.json()["lineItem"])


def test_discounts_limits_and_approval(smart: Smart, hospital: dict[str, str]) -> None:
    pid = patient(smart)
    items = charge(smart, hospital["officer"], visit(smart, pid))
    consult = next(i for i in items if i["identifier"][0]["value"].startswith("Encounter/"))

    def with_discount(value: float) -> dict[str, Any]:
        body = invoice_body(pid, [consult], hospital["org"])
        body["lineItem"][0]["priceComponent"] = [{"type": "discount", "amount": {"value": value, "currency": "INR"}}]
        return body

    small = call(smart, hospital["nurse"], "POST", "Invoice", with_discount(100))  # under the threshold: anyone
    assert small.status_code == 201, small.text
    assert total(small.json(), "totalGross") == 420.0  # (500 - 100) x 1.05
    refused(call(smart, hospital["officer"], "POST", "Invoice", with_discount(500.01)), 422,
            "billing-discount-exceeds-subtotal", "Invoice.lineItem[0].priceComponent")
    # Above the 1000.00 threshold: a second consultation-sized line is needed; use the bed days of a stay.
    enc = make(smart, {"resourceType": "Encounter", "status": "finished", "class": {"system": ACT, "code": "IMP"},
                       "subject": {"reference": f"Patient/{pid}"}, "location": [
                           {"location": {"reference": f"Location/{hospital['ward']}"},
                            "period": {"start": "2026-12-01T10:00:00Z", "end": "2026-12-05T10:00:00Z"}}]})
    stay = charge(smart, hospital["officer"], enc)
    big = invoice_body(pid, stay, hospital["org"])
    big["lineItem"][0]["priceComponent"] = [{"type": "discount", "amount": {"value": 1500, "currency": "INR"}}]
    refused(call(smart, hospital["nurse"], "POST", "Invoice", big), 422, "billing-discount-approval")
    approved = call(smart, hospital["officer"], "POST", "Invoice", big)
    assert approved.status_code == 201, approved.text
    inv = approved.json()
    assert total(inv, "totalGross") == 6500.0  # 4 nights x 2000 - 1500, exempt
    assert [p["actor"] for p in inv["participant"]] == [{"reference": hospital["officer_ref"]}]
    # The nurse may issue what the officer approved.
    issued = call(smart, hospital["nurse"], "PUT", f"Invoice/{inv['id']}", {**inv, "status": "issued"})
    assert issued.status_code == 200, issued.text
    # A second draft raising the discount: the nurse may not; and the stay is billed now, on no second invoice.
    again = call(smart, hospital["officer"], "POST", "Invoice", big)
    refused(again, 409, "billing-charge-item-billed", "Invoice.lineItem[0].chargeItemReference")


def test_status_transitions(smart: Smart, hospital: dict[str, str]) -> None:
    _pid, inv = billed_visit(smart, hospital, status="draft")
    url = f"Invoice/{inv['id']}"
    refused(call(smart, hospital["officer"], "PUT", url, {**inv, "status": "balanced"}), 409,
            "billing-invoice-status", "Invoice.status")
    issued = call(smart, hospital["officer"], "PUT", url, {**inv, "status": "issued"})
    assert issued.status_code == 200, issued.text
    inv = issued.json()
    charge_id = inv["lineItem"][0]["chargeItemReference"]["reference"]
    assert read(smart, charge_id)["status"] == "billed"
    refused(call(smart, hospital["officer"], "PUT", url, {**inv, "lineItem": inv["lineItem"][:1]}), 409,
            "billing-invoice-frozen", "Invoice.lineItem")
    refused(call(smart, hospital["officer"], "DELETE", url), 409, "billing-invoice-delete")
    cancelled = call(smart, hospital["officer"], "PUT", url, {**inv, "status": "cancelled"})
    assert cancelled.status_code == 200, cancelled.text
    assert read(smart, charge_id)["status"] == "billable"  # free to go on a new invoice
    refused(call(smart, hospital["officer"], "PUT", url, {**cancelled.json(), "status": "issued"}), 409,
            "billing-invoice-status")


def test_invoice_lines_must_be_this_patients_priced_charge_items(smart: Smart, hospital: dict[str, str]) -> None:
    token = hospital["officer"]
    pid, other = patient(smart), patient(smart)
    items = charge(smart, token, visit(smart, pid))
    theirs = charge(smart, token, visit(smart, other))
    refused(call(smart, token, "POST", "Invoice", invoice_body(pid, [*items, theirs[0]], None)), 422,
            "billing-line-subject", "Invoice.lineItem[3].chargeItemReference")
    refused(call(smart, token, "POST", "Invoice", invoice_body(pid, [items[0], items[0]], None)), 422,
            "billing-line-duplicate", "Invoice.lineItem[1].chargeItemReference")
    coded = invoice_body(pid, [], None, lineItem=[{"chargeItemCodeableConcept": {"text": "a service"}}])
    refused(call(smart, token, "POST", "Invoice", coded), 422, "billing-line-charge-item",
            "Invoice.lineItem[0].chargeItemReference")
    no_patient = {**invoice_body(pid, items, None), "subject": {"reference": f"Organization/{hospital['org']}"}}
    refused(call(smart, token, "POST", "Invoice", no_patient), 422, "billing-invoice-subject", "Invoice.subject")
    refused(call(smart, token, "POST", "Invoice", invoice_body(pid, [], None, status="issued")), 422,
            "billing-invoice-empty", "Invoice.lineItem")
    malformed = call(smart, token, "POST", "Invoice", {**invoice_body(pid, [], None), "lineItem": "all of it"})
    assert malformed.status_code == 400 and "lineItem" in malformed.text, malformed.text
    empty = call(smart, token, "POST", "Invoice", invoice_body(pid, [], None))  # an empty draft is fine
    assert empty.status_code == 201 and total(empty.json(), "totalGross") == 0
    ok = call(smart, token, "POST", "Invoice", invoice_body(pid, items, None))
    assert ok.status_code == 201, ok.text
    issued = call(smart, token, "PUT", f"Invoice/{ok.json()['id']}", {**ok.json(), "status": "issued"})
    assert issued.status_code == 200, issued.text
    refused(call(smart, token, "PUT", f"Invoice/{ok.json()['id']}", {**issued.json(), "status": "balanced"}), 409,
            "billing-invoice-not-paid", "Invoice.status")


# --- item 7: payments ---------------------------------------------------------------------------------------

def test_partial_payments_balance_and_refunds(smart: Smart, hospital: dict[str, str]) -> None:
    token = hospital["officer"]
    _pid, draft = billed_visit(smart, hospital, status="draft")
    refused(pay(smart, token, draft["id"], 100), 409, "billing-payment-invoice-status")
    _pid, inv = billed_visit(smart, hospital)  # 938.53
    url = f"Invoice/{inv['id']}"
    first = pay(smart, token, inv["id"], 400)
    assert first.status_code == 201, first.text
    assert read(smart, url)["status"] == "issued"
    refused(pay(smart, token, inv["id"], 538.54), 409, "billing-payment-exceeds-balance",
            "PaymentReconciliation.paymentAmount")
    refused(pay(smart, token, inv["id"], 0.001), 422, "billing-payment-amount")
    assert pay(smart, token, inv["id"], 538.53).status_code == 201
    assert read(smart, url)["status"] == "balanced"
    refused(pay(smart, token, inv["id"], 1), 409, "billing-payment-invoice-status")
    refused(pay(smart, token, inv["id"], -50), 422, "billing-refund-reason", "PaymentReconciliation.disposition")
    refund = pay(smart, token, inv["id"], -50, reason="lab test not performed")
    assert refund.status_code == 201, refund.text
    assert read(smart, url)["status"] == "issued"  # 50.00 open again
    refused(pay(smart, token, inv["id"], -888.54, reason="too much"), 409, "billing-refund-exceeds-paid")
    refused(call(smart, token, "PUT", f"PaymentReconciliation/{first.json()['id']}",
                 {**first.json(), "disposition": "changed"}), 409, "billing-payment-immutable")
    refused(call(smart, token, "DELETE", f"PaymentReconciliation/{first.json()['id']}"), 409,
            "billing-payment-immutable")
    refused(call(smart, token, "PUT", url, {**read(smart, url), "status": "cancelled"}), 409, "billing-invoice-paid")
    two = payment(inv["id"], 1)
    two["detail"].append({"type": two["detail"][0]["type"], "request": {"reference": f"Invoice/{draft['id']}"}})
    refused(call(smart, token, "POST", "PaymentReconciliation", two), 422, "billing-payment-invoice",
            "PaymentReconciliation.detail[1].request")
    malformed = call(smart, token, "POST", "PaymentReconciliation", {**payment(inv["id"], 1), "paymentAmount": [1]})
    assert malformed.status_code == 400 and "paymentAmount" in malformed.text, malformed.text
    dollars = {**payment(inv["id"], 1), "paymentAmount": {"value": 1, "currency": "USD"}}
    refused(call(smart, token, "POST", "PaymentReconciliation", dollars), 422, "billing-currency",
            "PaymentReconciliation.paymentAmount.currency")


def test_idempotency_key_replays_the_first_payment(smart: Smart, hospital: dict[str, str]) -> None:
    _pid, inv = billed_visit(smart, hospital)
    key = str(uuid.uuid4())
    first = pay(smart, hospital["officer"], inv["id"], 100, key)
    assert first.status_code == 201, first.text
    retry = pay(smart, hospital["officer"], inv["id"], 100, key)
    assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"]
    other = pay(smart, hospital["officer"], inv["id"], 100, str(uuid.uuid4()))
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    found = read(smart, f"PaymentReconciliation?identifier=urn:ietf:params:http:header:Idempotency-Key|{key}")
    assert len(found.get("entry", [])) == 1
    bad = pay(smart, hospital["officer"], inv["id"], 100, "has|pipe")
    assert bad.status_code == 400


def test_racing_retries_record_one_payment(smart: Smart, hospital: dict[str, str]) -> None:
    if smart.backend.name != "postgresql":
        pytest.skip("real concurrency: PostgreSQL (SQLite serialises writers)")
    _pid, inv = billed_visit(smart, hospital)
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: pay(smart, hospital["officer"], inv["id"], 900, key), range(50)))
    assert sorted({a.status_code for a in answers}) == [200, 201], [a.text for a in answers if a.status_code > 201]
    assert sum(a.status_code == 201 for a in answers) == 1
    assert len({a.json()["id"] for a in answers}) == 1
    # Different payments racing on one balance (38.53 left): 10 x 5.00 -> exactly 7 fit.
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: pay(smart, hospital["officer"], inv["id"], 5), range(10)))
    assert sorted(a.status_code for a in answers) == [201] * 7 + [409] * 3
    assert read(smart, f"Invoice/{inv['id']}")["status"] == "issued"
    # Two drafts billing the same ChargeItems, issued at once: one invoice bills them, the other is refused.
    pid = patient(smart)
    items = charge(smart, hospital["officer"], visit(smart, pid))
    drafts = [call(smart, hospital["officer"], "POST", "Invoice", invoice_body(pid, items, None)).json()
              for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        issued = list(pool.map(lambda d: call(smart, hospital["officer"], "PUT", f"Invoice/{d['id']}",
                                              {**d, "status": "issued"}), drafts))
    assert sorted(r.status_code for r in issued) == [200, 409], [r.text for r in issued]


# --- item 8: claims -----------------------------------------------------------------------------------------

def test_insured_patient_gets_a_claim_that_follows_its_response(smart: Smart, hospital: dict[str, str]) -> None:
    pid = patient(smart)
    coverage = make(smart, {"resourceType": "Coverage", "status": "active",
                            "beneficiary": {"reference": f"Patient/{pid}"},
                            "payor": [{"reference": f"Organization/{hospital['insurer']}"}],
                            "period": {"start": (date.today() - timedelta(days=30)).isoformat()}})
    items = charge(smart, hospital["officer"], visit(smart, pid))
    refused(call(smart, hospital["officer"], "POST", "Invoice", invoice_body(pid, items, None, status="issued")), 422,
            "billing-claim-provider", "Invoice.issuer")
    _pid, inv = billed_visit(smart, hospital, pid=pid)
    claims = read(smart, f"Claim?identifier=urn:fhir-server:invoice|Invoice/{inv['id']}").get("entry", [])
    assert len(claims) == 1
    claim = claims[0]["resource"]
    assert claim["insurance"] == [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/{coverage}"}}]
    assert claim["insurer"] == {"reference": f"Organization/{hospital['insurer']}"}
    assert claim["total"] == inv["totalGross"] and len(claim["item"]) == 3
    assert sum(i["net"]["value"] for i in claim["item"]) == pytest.approx(938.53)
    response = {"resourceType": "ClaimResponse", "status": "active", "use": "claim", "outcome": "complete",
                "type": claim["type"], "patient": claim["patient"], "created": date.today().isoformat(),
                "insurer": claim["insurer"], "request": {"reference": f"Claim/{claim['id']}"}}
    r = call(smart, hospital["officer"], "POST", "ClaimResponse", response)
    assert r.status_code == 201, r.text
    followed = read(smart, f"Claim/{claim['id']}")
    outcome = next(e for e in followed["extension"] if e["url"] == CLAIM_OUTCOME)
    assert outcome["extension"][0] == {"url": "outcome", "valueCode": "complete"}
    assert followed["status"] == "active"
    r = call(smart, hospital["officer"], "PUT", f"ClaimResponse/{r.json()['id']}",
             {**r.json(), "status": "cancelled"})
    assert r.status_code == 200, r.text
    assert read(smart, f"Claim/{claim['id']}")["status"] == "cancelled"
    # A writer that stores a response and then its stale copy of the Claim in one transaction (as the claims
    # adapter's callbacks do) cannot undo the response's effect: the Claim follows at the end of the transaction.
    stale = read(smart, f"Claim/{claim['id']}")
    stale.pop("extension")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**response, "status": "active", "outcome": "partial"},
         "request": {"method": "POST", "url": "ClaimResponse"}},
        {"resource": {**stale, "status": "draft"}, "request": {"method": "PUT", "url": f"Claim/{claim['id']}"}}]}
    r = call(smart, hospital["officer"], "POST", "", bundle)
    assert r.status_code == 200, r.text
    followed = read(smart, f"Claim/{claim['id']}")
    assert followed["status"] == "active"
    assert next(e for e in followed["extension"] if e["url"] == CLAIM_OUTCOME)["extension"][0]["valueCode"] == \
        "partial"
    # A self-paying patient: no claim.
    _pid, own = billed_visit(smart, hospital)
    assert not read(smart, f"Claim?identifier=urn:fhir-server:invoice|Invoice/{own['id']}").get("entry")


def test_charging_needs_the_right_to_create_charge_items(smart: Smart, hospital: dict[str, str]) -> None:
    enc = visit(smart, patient(smart))
    reader = smart.system_token("system/Encounter.rs system/DiagnosticReport.rs system/ChargeItem.rs")
    r = call(smart, reader, "POST", f"Encounter/{enc}/$charge", {"resourceType": "Parameters"})
    assert r.status_code == 403, r.text
    assert read(smart, f"ChargeItem?identifier={CHARGE_SOURCE}|Encounter/{enc}&_summary=count")["total"] == 0
