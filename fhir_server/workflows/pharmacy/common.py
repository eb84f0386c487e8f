"""Small shared pieces of the pharmacy rules: codes and URLs, references, FHIR dates, who the caller is."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_server.storage.access import SystemAccess
from fhir_server.storage.repository import AccessPolicy, instant

BASE = "https://fhir-server.dev"
PHARMACY = f"{BASE}/CodeSystem/pharmacy"  # our codes: medication-stock, stock-movement, low-stock, expiring-stock
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

OVERRIDE = f"{BASE}/StructureDefinition/medication-safety-override"  # valueString: the doctor's reason
DISPENSED_BATCH = f"{BASE}/StructureDefinition/dispensed-batch"  # batch, lotNumber, quantity (set by the server)
STOCK_PROFILE = f"{BASE}/StructureDefinition/medication-stock"
MOVEMENT_PROFILE = f"{BASE}/StructureDefinition/stock-movement"
EXT_LOCATION = f"{BASE}/StructureDefinition/stock-location"
EXT_QUANTITY = f"{BASE}/StructureDefinition/stock-quantity"
EXT_BALANCE = f"{BASE}/StructureDefinition/stock-balance"
EXT_CAUSE = f"{BASE}/StructureDefinition/stock-movement-cause"
EXT_PRODUCT = f"{BASE}/StructureDefinition/stock-product"
STOCK_KEY = f"{BASE}/identifier/medication-stock"  # Location/L/Medication/B: one stock record per batch and store
STOCK_PRODUCT = f"{BASE}/identifier/medication-stock-product"  # Location/L <system> <code>: a store's product
MOVEMENT_CAUSE = f"{BASE}/identifier/stock-movement-cause"  # MedicationDispense/D, SupplyDelivery/S
ALERT_KEY = f"{BASE}/identifier/pharmacy-alert"

# The server's own writes of stock records and movements act with this reason; nobody else writes them.
STOCK_REASON = "pharmacy stock ledger: stock records and movements follow dispenses and receipts"
SAFETY_REASON = "medication safety: the patient's allergies and prescriptions, the DetectedIssues found"


def role_of(access: AccessPolicy) -> str | None:
    return getattr(access, "role", None)


def is_local(access: AccessPolicy) -> bool:
    """The server without tokens (FHIR_AUTH_REQUIRED=false) or acting for itself: no role to check."""
    return isinstance(access, SystemAccess)


def practitioner_of(access: AccessPolicy) -> str | None:
    user = getattr(access, "fhir_user", None)
    return user if isinstance(user, str) and user.startswith("Practitioner/") else None


def ref_id(value: Any, rtype: str) -> str | None:
    """``Type/id`` of a local Reference to ``rtype`` (None for anything else)."""
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str):
        return None
    parts = ref.split("/_history/")[0].split("/")
    if len(parts) >= 2 and parts[-2] == rtype and parts[-1]:
        return parts[-1]
    return None


def codings(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [(str(c.get("system") or ""), str(c["code"])) for c in concept.get("coding") or []
            if isinstance(c, dict) and c.get("code")]


def extension(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext
    return None


def parse_time(text: Any, *, end: bool = False) -> datetime | None:
    """A FHIR date or dateTime as a UTC datetime; a partial date is its first moment, or with ``end`` its last
    (a batch that expires "2027-03" is usable through 31 March)."""
    if not isinstance(text, str) or len(text) < 4:
        return None
    try:
        if len(text) == 4:
            year = int(text)
            return datetime(year, 12, 31, 23, 59, 59, tzinfo=UTC) if end else datetime(year, 1, 1, tzinfo=UTC)
        if len(text) == 7:
            year, month = int(text[:4]), int(text[5:7])
            if end:
                return datetime(year, month, calendar.monthrange(year, month)[1], 23, 59, 59, tzinfo=UTC)
            return datetime(year, month, 1, tzinfo=UTC)
        if len(text) == 10:
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return day + timedelta(days=1, seconds=-1) if end else day
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    except ValueError:
        return None


def now() -> datetime:
    return datetime.now(UTC)


def stamp(value: datetime) -> str:
    return instant(value)


def quantity_value(quantity: Any) -> float | None:
    value = quantity.get("value") if isinstance(quantity, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def number(value: float) -> int | float:
    """A quantity as FHIR JSON writes it: whole numbers without a fraction."""
    return int(value) if float(value).is_integer() else round(value, 6)
