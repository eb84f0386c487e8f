"""The dashboard's reports (issue 18, item 9; docs/workflows/reports.md): ``Measure/$evaluate-measure`` with
``measure`` = one of the Measures in measures.json answers a summary MeasureReport for a period and,
optionally, a department. Each figure is computed in the database by SQL aggregates over the search index
tables and the stored JSON (care.py, money.py, supplies.py), in the tenant's own repository; nothing loads
every resource into Python.

Access: hospital management only: a user whose role is ``admin`` or ``manager`` (roles.py), or a backend
service that may read MeasureReports of every kind (``system/MeasureReport.r``); anyone else gets 403, since
the figures count every patient and every invoice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.errors import FORBIDDEN, INVALID, NOT_FOUND, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import instant
from fhir_server.workflows.reports import care, money, supplies
from fhir_server.workflows.reports.measure import Period, Query
from fhir_server.workflows.reports.sql import Dialect

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import AccessPolicy, Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"
MEASURES = Path(__file__).with_name("measures.json")
REPORT_ROLES = frozenset({"admin", "manager"})
CURRENCY = "INR"  # the billing area's currency (billing/rules.json)
MAX_DAYS = 366 * 5

Report = Callable[[Query], list[dict[str, Any]]]
REPORTS: dict[str, Report] = {
    "bed-occupancy": care.occupancy,
    "appointments": care.appointments,
    "no-show-rate": care.no_shows,
    "revenue": money.revenue,
    "outstanding-balances": money.outstanding,
    "lab-turnaround": care.laboratory,
    "doctor-workload": care.workload,
    "pharmacy-stock": supplies.stock,
    "patient-demographics": supplies.demographics,
}


def may_report(access: AccessPolicy) -> bool:
    role = getattr(access, "role", None)
    if role is not None:
        return role in REPORT_ROLES
    return access.may("MeasureReport", "r")


def _bound(text: str | None, name: str, *, end: bool) -> datetime | None:
    """A periodStart/periodEnd (date or dateTime) as a UTC moment; a date's end is the next midnight."""
    if not text:
        return None
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise FhirError(400, INVALID, f"{name} must be a date or a dateTime with a time zone, not {text!r}", (name,))
    return moment.astimezone(UTC)


def _department(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    parts = text.split("/")
    if len(parts) != 2 or parts[0] not in ("Organization", "Location") or not parts[1]:
        raise FhirError(400, INVALID, f"department must be Organization/[id] or Location/[id], not {text!r}",
                        ("department",))
    return parts[0], parts[1]


class EvaluateMeasure:
    def __init__(self) -> None:
        data = json.loads(MEASURES.read_text())
        self.measures = {m["id"]: m for m in data["measures"]}

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        # auth: the figures count every patient, stay and invoice: management only
        if not may_report(repo.access):
            raise FhirError(403, FORBIDDEN, "$evaluate-measure reports on the whole hospital: it needs the admin "
                                            "or manager role (or a backend granted system/MeasureReport.r)",
                            ("$evaluate-measure",))
        name = req.param("measure") or ""
        name = name.rsplit("/Measure/", 1)[-1].split("|")[0]
        if name not in self.measures:
            raise FhirError(404 if name else 400, NOT_FOUND if name else INVALID,
                            f"measure must be one of {', '.join(self.measures)} (or its canonical URL)", ("measure",))
        report_type = req.param("reportType") or "summary"
        if report_type != "summary":
            raise FhirError(400, INVALID, "Only reportType=summary is produced", ("reportType",))
        now = datetime.now(UTC)
        end = _bound(req.param("periodEnd"), "periodEnd", end=True) or now
        start = _bound(req.param("periodStart"), "periodStart", end=False) or end - timedelta(days=30)
        if start >= end or (end - start).days > MAX_DAYS:
            raise FhirError(400, INVALID, f"periodStart must be before periodEnd, at most {MAX_DAYS} days apart",
                            ("periodStart",))
        department = _department(req.param("department"))
        query = Query(repo, Dialect(repo.dialect == "postgresql"), Period(start, end), department, now, CURRENCY)
        measure = self.measures[name]
        report: dict[str, Any] = {
            "resourceType": "MeasureReport", "status": "complete", "type": "summary", "measure": measure["url"],
            "date": instant(now), "period": {"start": instant(start), "end": instant(end)},
            "group": REPORTS[name](query)}
        if department is not None:
            report["reporter"] = {"reference": "/".join(department)}
        return FhirResponse(200, report)


def install(server: FhirServer) -> None:
    server.operations.register(Operation("evaluate-measure", EvaluateMeasure(), DEFINITION,
                                         types=frozenset({"Measure"}), read_only=True))
