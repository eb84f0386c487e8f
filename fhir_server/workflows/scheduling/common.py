"""What the scheduling rules share: their thresholds (from the server's settings), data files, times, search."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_server.config import Settings
from fhir_server.errors import INVALID, FhirError
from fhir_server.storage.repository import Repository

DATA = Path(__file__).parent / "resources"  # JSON tables and FHIR resources (not "data/": git ignores it)
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@cache
def data(name: str) -> dict[str, Any]:
    """A data file of this package (read-only constants, the same for every tenant)."""
    return dict(json.loads((DATA / name).read_text()))


def extension_url(name: str) -> str:
    return str(data("extensions.json")[name])


def status_table() -> dict[str, Any]:
    return data("appointment-status.json")


@dataclass(frozen=True)
class Rules:
    """One server's (tenant's) scheduling thresholds, read from its settings."""

    zone: ZoneInfo
    clinic_open: time
    clinic_close: time
    slot_minutes: int
    daily_cap: int
    horizon_days: int
    lead: timedelta
    max_reschedules: int
    noshow_flag_after: int

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        try:
            zone = ZoneInfo(settings.scheduling_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise FhirError(500, INVALID, f"FHIR_SCHEDULING_TIMEZONE {settings.scheduling_timezone!r} is not a "
                                          f"time zone") from None
        opening, _, closing = settings.scheduling_clinic_hours.partition("-")
        try:
            clinic_open, clinic_close = time.fromisoformat(opening.strip()), time.fromisoformat(closing.strip())
        except ValueError:
            raise FhirError(500, INVALID, "FHIR_SCHEDULING_CLINIC_HOURS must read HH:MM-HH:MM") from None
        return cls(zone, clinic_open, clinic_close, max(1, settings.scheduling_slot_minutes),
                   settings.scheduling_daily_cap, settings.scheduling_horizon_days,
                   timedelta(minutes=settings.scheduling_min_lead_minutes), settings.scheduling_max_reschedules,
                   settings.scheduling_noshow_flag_after)

    def local_day(self, instant: datetime) -> tuple[datetime, datetime]:
        """The clinic's calendar day holding ``instant``, as [start, end) instants."""
        day = instant.astimezone(self.zone).date()
        start = datetime.combine(day, time(0), self.zone)
        return start, datetime.combine(day + timedelta(days=1), time(0), self.zone)


def now() -> datetime:
    return datetime.now(UTC)


def parse_instant(value: Any, where: str) -> datetime:
    """A FHIR instant or dateTime (a date alone: its midnight, UTC when no zone is given)."""
    if not isinstance(value, str) or not value:
        raise FhirError(422, INVALID, f"{where} must be a date-time", (where,))
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")) if "T" in value \
            else datetime.combine(date.fromisoformat(value), time(0))
    except ValueError:
        raise FhirError(422, INVALID, f"{where} {value!r} is not a date-time", (where,)) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def fhir_instant(value: datetime, zone: ZoneInfo | None = None, timespec: str = "seconds") -> str:
    """An instant in the clinic's local offset (what a front desk reads), to the second unless told."""
    local = value.astimezone(zone) if zone is not None else value.astimezone(UTC)
    return local.isoformat(timespec=timespec).replace("+00:00", "Z")


def ref_id(reference: Any, rtype: str) -> str | None:
    """The id of a local ``rtype/id`` reference (an absolute URL ending in it counts), else None."""
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(text, str):
        return None
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == rtype else None


def find(repo: Repository, rtype: str, params: list[tuple[str, str]], *, limit: int = 5000) -> list[dict[str, Any]]:
    """Current resources matching a search, read through the repository with its access."""
    ids: list[str] = []
    after: str | None = None
    while len(ids) < limit:
        page = repo.find_ids(rtype, params, limit=min(1000, limit - len(ids)), after=after)
        ids += page
        if len(page) < 1000:
            break
        after = page[-1]
    return [v.content for v in repo.read_many([(rtype, i) for i in ids]) if v.content is not None]


def overlaps(a_start: datetime, a_end: datetime, b_start: datetime, b_end: datetime) -> bool:
    return a_start < b_end and b_start < a_end
