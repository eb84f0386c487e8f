"""The dashboard's reports (issue 18 item 9) over real HTTP with real tokens, on SQLite and PostgreSQL: each
Measure/$evaluate-measure figure against data whose answer is known, by period and department; only the
admin and manager roles (or a backend granted system/MeasureReport.r) get them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Backend
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_workflows_billing import PRICELIST, call, charge, invoice_body, make, pay, visit

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PHYSICAL = "http://terminology.hl7.org/CodeSystem/location-physical-type"
PHARMACY = "https://fhir-server.dev/CodeSystem/pharmacy"
SD = "https://fhir-server.dev/StructureDefinition/"
MARCH = "periodStart=2026-03-01&periodEnd=2026-03-31"
JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    yield from smart_server(backend, workflows="reports,billing")


def _kind(code: str) -> dict[str, Any]:
    return {"coding": [{"system": PHYSICAL, "code": code}]}


@pytest.fixture(scope="module")
def world(smart: Smart) -> dict[str, str]:
    """A small hospital in March 2026 (written as a historic load), and today's invoices and payments."""
    w: dict[str, str] = {}
    r = smart.as_admin("POST", "", content=PRICELIST.read_bytes(), headers=JSON)  # paracetamol 2.50 a tablet
    assert r.status_code == 200, r.text
    w["org"] = make(smart, {"resourceType": "Organization", "name": "City Hospital"})
    w["dept"] = make(smart, {"resourceType": "Organization", "name": "Medicine",
                             "partOf": {"reference": f"Organization/{w['org']}"}})
    w["other"] = make(smart, {"resourceType": "Organization", "name": "Surgery",
                              "partOf": {"reference": f"Organization/{w['org']}"}})
    w["ward"] = make(smart, {"resourceType": "Location", "name": "Ward 1", "physicalType": _kind("wa"),
                             "managingOrganization": {"reference": f"Organization/{w['dept']}"}})
    room = make(smart, {"resourceType": "Location", "name": "Room 1", "physicalType": _kind("ro"),
                        "partOf": {"reference": f"Location/{w['ward']}"}})
    beds = [make(smart, {"resourceType": "Location", "name": f"Bed {i}", "physicalType": _kind("bd"),
                         "partOf": {"reference": f"Location/{room}"}}) for i in (1, 2)]
    w["dr"] = make(smart, {"resourceType": "Practitioner", "name": [{"family": "Rao"}]})
    role = make(smart, {"resourceType": "PractitionerRole", "practitioner": {"reference": f"Practitioner/{w['dr']}"},
                        "organization": {"reference": f"Organization/{w['dept']}"}})
    w["p1"] = make(smart, {"resourceType": "Patient", "gender": "female", "birthDate": "1950-02-01",
                           "managingOrganization": {"reference": f"Organization/{w['org']}"}})
    w["p2"] = make(smart, {"resourceType": "Patient", "gender": "male", "birthDate": "2015-06-30"})
    make(smart, {"resourceType": "Patient", "gender": "male", "birthDate": "1990-01-01", "active": False})
    dr = {"reference": f"Practitioner/{w['dr']}"}
    # Two stays: bed 1 for 10 days (finished), bed 2 from 25 March, still there at the month's end (7 days).
    for bed, start, end, pid in ((beds[0], "2026-03-10T00:00:00Z", "2026-03-20T00:00:00Z", w["p1"]),
                                 (beds[1], "2026-03-25T00:00:00Z", None, w["p2"])):
        period = {"start": start, **({"end": end} if end else {})}
        make(smart, {"resourceType": "Encounter", "status": "finished" if end else "in-progress",
                     "class": {"system": ACT, "code": "IMP"}, "subject": {"reference": f"Patient/{pid}"},
                     "participant": [{"individual": dr}], "period": period,
                     "location": [{"location": {"reference": f"Location/{bed}"}, "period": period,
                                   "status": "completed" if end else "active"}]})
    for status, day in (("fulfilled", 2), ("noshow", 3), ("arrived", 4), ("booked", 5), ("cancelled", 6),
                        ("fulfilled", 40)):  # the last one is in April
        start = datetime(2026, 3, 1, 9, tzinfo=UTC) + timedelta(days=day)
        make(smart, {"resourceType": "Appointment", "status": status, "start": start.isoformat(),
                     "end": (start + timedelta(minutes=20)).isoformat(),
                     "participant": [{"actor": dr, "status": "accepted"},
                                     {"actor": {"reference": f"PractitionerRole/{role}"}, "status": "accepted"},
                                     {"actor": {"reference": f"Patient/{w['p1']}"}, "status": "accepted"}]})
    for priority, status, minutes in (("stat", "completed", 90), ("routine", "active", None),
                                      ("routine", "completed", 30)):
        body: dict[str, Any] = {"resourceType": "ServiceRequest", "status": status, "intent": "order",
                                "priority": priority, "code": {"text": "CBC"}, "requester": dr,
                                "subject": {"reference": f"Patient/{w['p1']}"}, "authoredOn": "2026-03-05T08:00:00Z"}
        if minutes is not None:
            body["extension"] = [{"url": SD + "lab-turnaround-time", "valueDuration": {
                "value": minutes, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}}]
        make(smart, body)
    # Stock: 10 tablets at 2.50 expiring next month, 100 expiring in 2 years, at one store.
    w["store"] = make(smart, {"resourceType": "Location", "name": "Main pharmacy"})
    today = datetime.now(UTC).date()
    for units, expiry in ((10, today + timedelta(days=30)), (100, today + timedelta(days=700))):
        batch = make(smart, {"resourceType": "Medication", "code": {"coding": [
            {"system": "http://snomed.info/sct", "code": "322236009"}]},
            "batch": {"lotNumber": f"L{units}", "expirationDate": expiry.isoformat()}})
        make(smart, {"resourceType": "Basic", "code": {"coding": [{"system": PHARMACY, "code": "medication-stock"}]},
                     "subject": {"reference": f"Medication/{batch}"},
                     "extension": [{"url": SD + "stock-location",
                                    "valueReference": {"reference": f"Location/{w['store']}"}},
                                   {"url": SD + "stock-quantity", "valueQuantity": {"value": units}}]})
    return w


@pytest.fixture(scope="module")
def tokens(smart: Smart) -> dict[str, str]:
    scope = "openid fhirUser user/*.cruds"
    return {role: str(_user_token(smart, role, scope)["access_token"])
            for role in ("manager", "admin", "nurse", "billing_officer", "receptionist")}


def report(smart: Smart, token: str, query: str) -> dict[str, Any]:
    r = smart.fhir("GET", f"Measure/$evaluate-measure?{query}", token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "MeasureReport" and body["type"] == "summary", body
    return dict(body)


def figure(body: dict[str, Any], code: str) -> dict[str, Any]:
    return next(g for g in body["group"] if g["code"]["coding"][0]["code"] == code)


def counts(node: dict[str, Any]) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in node["population"]}


def strata(group: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    stratifier = next(s for s in group["stratifier"] if s["code"][0]["coding"][0]["code"] == name)
    return {s["value"]["text"]: s for s in stratifier["stratum"]}


def test_bed_occupancy_and_census(smart: Smart, world: dict[str, str], tokens: dict[str, str]) -> None:
    body = report(smart, tokens["manager"], f"measure=bed-occupancy&{MARCH}")
    assert body["measure"] == "https://fhir-server.dev/Measure/bed-occupancy"
    occupancy, census = figure(body, "bed-occupancy"), figure(body, "census")
    assert counts(occupancy) == {"denominator": 2}
    assert occupancy["measureScore"]["value"] == 27.4  # 17 bed-days / (2 beds x 31 days)
    assert counts(census) == {"initial-population": 1} and census["measureScore"]["value"] == 0.55
    assert strata(occupancy, "ward")[f"Location/{world['ward']}"]["measureScore"]["value"] == 27.4
    # by department: the ward's managing Organization, or the ward itself; another department has none
    for dept in (f"Organization/{world['dept']}", f"Location/{world['ward']}"):
        assert counts(figure(report(smart, tokens["manager"], f"measure=bed-occupancy&{MARCH}&department={dept}"),
                             "census")) == {"initial-population": 1}
    other = report(smart, tokens["manager"], f"measure=bed-occupancy&{MARCH}&department=Organization/{world['other']}")
    assert counts(figure(other, "bed-occupancy")) == {"denominator": 0}
    assert other["reporter"] == {"reference": f"Organization/{world['other']}"}
    # 15 March: only bed 1 was taken
    mid = report(smart, tokens["manager"], "measure=bed-occupancy&periodStart=2026-03-15&periodEnd=2026-03-15")
    assert counts(figure(mid, "census")) == {"initial-population": 1}
    assert figure(mid, "bed-occupancy")["measureScore"]["value"] == 50.0


def test_appointments_no_shows_and_workload(smart: Smart, world: dict[str, str], tokens: dict[str, str]) -> None:
    body = report(smart, tokens["manager"], f"measure=appointments&{MARCH}")
    by_status = {k: counts(v)["initial-population"] for k, v in strata(figure(body, "appointments"), "status").items()}
    assert by_status == {"arrived": 1, "booked": 1, "cancelled": 1, "fulfilled": 1, "noshow": 1}
    rate = figure(report(smart, tokens["manager"], f"measure=no-show-rate&{MARCH}&department=Organization/"
                                                   f"{world['dept']}"), "no-show-rate")
    assert counts(rate) == {"numerator": 1, "denominator": 3} and rate["measureScore"]["value"] == 33.3
    none = figure(report(smart, tokens["manager"], f"measure=no-show-rate&{MARCH}&department=Organization/"
                                                   f"{world['other']}"), "no-show-rate")
    assert counts(none) == {"numerator": 0, "denominator": 0}
    work = report(smart, tokens["manager"], f"measure=doctor-workload&{MARCH}")
    dr = f"Practitioner/{world['dr']}"
    assert counts(strata(figure(work, "workload-encounters"), "practitioner")[dr]) == {"initial-population": 2}
    assert counts(strata(figure(work, "workload-appointments"), "practitioner")[dr]) == {"initial-population": 5}


def test_lab_volume_and_turnaround(smart: Smart, world: dict[str, str], tokens: dict[str, str]) -> None:
    body = report(smart, tokens["manager"], f"measure=lab-turnaround&{MARCH}&department=Organization/{world['dept']}")
    volume, turnaround = figure(body, "lab-volume"), figure(body, "lab-turnaround")
    assert counts(volume) == {"initial-population": 3, "numerator": 2}
    assert counts(strata(volume, "priority")["stat"]) == {"initial-population": 1, "numerator": 1}
    assert turnaround["measureScore"] == {"value": 60.0, "unit": "min", "system": "http://unitsofmeasure.org",
                                          "code": "min"}
    assert strata(turnaround, "priority")["routine"]["measureScore"]["value"] == 30.0
    april = report(smart, tokens["manager"], "measure=lab-turnaround&periodStart=2026-04-01&periodEnd=2026-04-30")
    assert counts(figure(april, "lab-volume")) == {"initial-population": 0, "numerator": 0}


def test_stock_and_demographics(smart: Smart, world: dict[str, str], tokens: dict[str, str]) -> None:
    today = datetime.now(UTC).date().isoformat()
    body = report(smart, tokens["manager"], f"measure=pharmacy-stock&periodStart={today}&periodEnd={today}")
    value, expiring = figure(body, "stock-value"), figure(body, "stock-expiring")
    assert counts(value) == {"initial-population": 110} and value["measureScore"]["value"] == 275.0
    assert value["measureScore"]["code"] == "INR"
    assert counts(expiring) == {"initial-population": 10, "numerator": 0}
    assert expiring["measureScore"]["value"] == 25.0
    assert strata(expiring, "store")[f"Location/{world['store']}"]["population"][0]["count"] == 10
    people = figure(report(smart, tokens["manager"], f"measure=patient-demographics&{MARCH}"), "patients")
    assert counts(people) == {"initial-population": 2}  # the inactive one is not counted
    assert {k: counts(v)["initial-population"] for k, v in strata(people, "age").items()} == {"0-17": 1, "65+": 1}
    assert set(strata(people, "gender")) == {"female", "male"}
    mine = report(smart, tokens["manager"], f"measure=patient-demographics&{MARCH}&department=Organization/"
                                            f"{world['org']}")
    assert counts(figure(mine, "patients")) == {"initial-population": 1}


def test_revenue_collections_and_outstanding(smart: Smart, world: dict[str, str], tokens: dict[str, str]) -> None:
    officer = tokens["billing_officer"]
    totals = []
    for _ in range(2):
        items = charge(smart, officer, visit(smart, world["p1"]))
        r = call(smart, officer, "POST", "Invoice", invoice_body(world["p1"], items, world["org"], status="issued"))
        assert r.status_code == 201, r.text
        totals.append((r.json()["id"], r.json()["totalGross"]["value"]))
    assert pay(smart, officer, totals[0][0], 100).status_code == 201
    assert pay(smart, officer, totals[0][0], -40, reason="overcharged").status_code == 201
    today = datetime.now(UTC).date()
    period = f"periodStart={today - timedelta(days=1)}&periodEnd={today}"
    body = report(smart, tokens["admin"], f"measure=revenue&{period}")
    revenue, collections = figure(body, "revenue"), figure(body, "collections")
    assert counts(revenue) == {"initial-population": 2}
    assert revenue["measureScore"]["value"] == pytest.approx(totals[0][1] + totals[1][1])
    assert collections["measureScore"]["value"] == 60.0 and counts(collections) == {"initial-population": 2}
    assert strata(collections, "kind")["refunds"]["measureScore"]["value"] == -40.0
    due = figure(report(smart, tokens["manager"], f"measure=outstanding-balances&{period}"), "outstanding")
    assert counts(due) == {"initial-population": 2}
    assert due["measureScore"]["value"] == pytest.approx(totals[0][1] + totals[1][1] - 60)
    assert counts(strata(due, "age")["0-30"]) == {"initial-population": 2}
    other = report(smart, tokens["manager"], f"measure=revenue&{period}&department=Organization/{world['other']}")
    assert counts(figure(other, "revenue")) == {"initial-population": 0}
    march = report(smart, tokens["manager"], f"measure=revenue&{MARCH}")
    assert counts(figure(march, "collections")) == {"initial-population": 0}


def test_only_management_gets_reports(smart: Smart, world: dict[str, str], tokens: dict[str, str]) -> None:
    query = f"Measure/$evaluate-measure?measure=patient-demographics&{MARCH}"
    for role in ("nurse", "billing_officer", "receptionist"):
        r = smart.fhir("GET", query, tokens[role])
        assert r.status_code == 403, (role, r.text)
        assert r.json()["issue"][0]["expression"] == ["$evaluate-measure"]
    assert smart.fhir("GET", query, smart.system_token("system/Patient.rs")).status_code == 403
    assert smart.fhir("GET", query, smart.system_token("system/MeasureReport.r")).status_code == 200
    assert smart.fhir("GET", query, tokens["admin"]).status_code == 200
    # the manager reads the hospital's structure, not a patient's record
    assert smart.fhir("GET", f"Patient/{world['p1']}", tokens["manager"]).status_code == 403
    assert smart.fhir("GET", f"Organization/{world['dept']}", tokens["manager"]).status_code == 200


@pytest.mark.parametrize(("query", "status", "where"), [
    ("measure=nothing", 404, "measure"),
    ("periodStart=2026-03-01", 400, "measure"),
    ("measure=revenue&periodStart=yesterday", 400, "periodStart"),
    ("measure=revenue&periodStart=2026-03-31&periodEnd=2026-03-01", 400, "periodStart"),
    ("measure=revenue&department=Patient/1", 400, "department"),
    ("measure=revenue&reportType=subject-list", 400, "reportType"),
])
def test_bad_questions(smart: Smart, tokens: dict[str, str], query: str, status: int, where: str) -> None:
    r = smart.fhir("GET", f"Measure/$evaluate-measure?{query}", tokens["manager"])
    assert r.status_code == status, r.text
    assert r.json()["issue"][0]["expression"] == [where]
