"""What every report shares: the period and department asked for, and the MeasureReport's pieces.

A report's figures are MeasureReport groups: ``population`` counts (measure-population codes: initial-population
for a count, numerator / denominator for a rate), a ``measureScore`` (a rate in %, a mean, or money in the
hospital's currency) and stratifiers (per ward, status, practitioner...), each stratum with its own counts and
score. Group codes are ours (``report-figure``), named in the Measure definitions (measures.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text

from fhir_server.search.tables import DATE
from fhir_server.storage.repository import instant
from fhir_server.workflows.reports.sql import Dialect

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

FIGURE = "https://fhir-server.dev/CodeSystem/report-figure"
POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
UCUM = "http://unitsofmeasure.org"
CURRENCY = "urn:iso:std:iso:4217"
STRATUM = "https://fhir-server.dev/CodeSystem/report-stratifier"


@dataclass(frozen=True)
class Period:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC

    @property
    def start_text(self) -> str:
        return instant(self.start)

    @property
    def end_text(self) -> str:
        return instant(self.end)

    @property
    def days(self) -> Decimal:
        return Decimal((self.end - self.start).total_seconds()) / Decimal(86400)


@dataclass(frozen=True)
class Query:
    """One report's question: the repository it runs in (the tenant's, with the caller's access), the SQL
    dialect, the period, the department (``("Organization", id)`` or ``("Location", id)``) and the clock."""

    repo: Repository
    sql: Dialect
    period: Period
    department: tuple[str, str] | None
    now: datetime
    currency: str

    def rows(self, statement: str, **params: Any) -> list[Any]:
        """Run one report statement; ``:ps_t`` / ``:pe_t`` (the period as datetimes, for the search_date
        index) and ``:ps`` / ``:pe`` (as instant text, for JSON periods) are always bound."""
        names = set(re.findall(r"(?<!:):([a-z_][a-z0-9_]*)", statement))
        stmt = text(statement).bindparams(*(bindparam(n, type_=DATE.c.low.type) for n in ("ps_t", "pe_t")
                                            if n in names))
        values = {"ps_t": self.period.start, "pe_t": self.period.end, "ps": self.period.start_text,
                  "pe": self.period.end_text, "no": False, **params}
        return list(self.repo.execute(stmt, {k: v for k, v in values.items() if k in names}).all())

    def staff_sql(self) -> str:
        """The Practitioners (ids) holding a PractitionerRole in the department Organization (``:dept``)."""
        return ("SELECT p.target_id FROM search_reference o JOIN search_reference p ON p.resource_type = "
                "'PractitionerRole' AND p.resource_id = o.resource_id AND p.param = 'practitioner' "
                "WHERE o.resource_type = 'PractitionerRole' AND o.param = 'organization' "
                "AND o.target_type = 'Organization' AND o.target_id = :dept")


def rounded(value: Any, places: str = "0.01") -> Decimal:
    return Decimal(str(value or 0)).quantize(Decimal(places), rounding=ROUND_HALF_UP)


def percent(part: Any, whole: Any) -> Decimal:
    if not whole:
        return Decimal("0.0")
    return rounded(Decimal(str(part)) * 100 / Decimal(str(whole)), "0.1")


def population(code: str, count: Any) -> dict[str, Any]:
    return {"code": {"coding": [{"system": POPULATION, "code": code}]}, "count": int(count or 0)}


def score(value: Decimal, unit: str) -> dict[str, Any]:
    """A measureScore: ``%``, ``min``, ``d`` (UCUM) or a currency code (ISO 4217)."""
    system = UCUM if unit in ("%", "min", "d", "1") else CURRENCY
    return {"value": float(value), "unit": unit, "system": system, "code": unit}


def stratum(value: str, populations: list[dict[str, Any]], measure_score: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    out: dict[str, Any] = {"value": {"text": value}, "population": populations}
    if measure_score is not None:
        out["measureScore"] = measure_score
    return out


def group(code: str, populations: list[dict[str, Any]], measure_score: dict[str, Any] | None = None,
          strata: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"code": {"coding": [{"system": FIGURE, "code": code}]}, "population": populations}
    if measure_score is not None:
        out["measureScore"] = measure_score
    if strata:
        out["stratifier"] = [{"code": [{"coding": [{"system": STRATUM, "code": name}]}], "stratum": items}
                             for name, items in strata.items()]
    return out
