"""``Location/$census`` (issue 18, item 5): beds, occupied beds and occupancy per ward at any moment,
computed in the database from the Encounters' location history (each bed entry's period) and the Location
hierarchy (bed partOf room partOf ward, or bed partOf ward), one SQL statement whatever the hospital's size;
the search index's ``location-period`` rows pick the Encounters present at that moment before any JSON is read.

Parameters: ``date`` (a dateTime; default now), ``ward`` (a ward's id or ``Location/id``: only that ward).
Answers a Parameters resource: ``date``, one ``ward`` part per ward (location, beds, occupied, available,
occupancy in percent, 1 decimal) and a ``total`` part. Access: a caller who may search Locations and every
patient's Encounters (no patient-compartment restriction), since the figures count every patient.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text

from fhir_server.errors import FORBIDDEN, INVALID, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.search.tables import DATE
from fhir_server.storage.repository import instant
from fhir_server.workflows.wards.config import WardCodes, utc_instant

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository

DEFINITION = "https://fhir-server.dev/OperationDefinition/Location-census"

# {kind}: the physicalType code of a Location; {parent}: its partOf reference; {entries}: an Encounter's
# location entries as rows with a JSON ``value``; {get}: a text path in such a value.
_SQL = """
WITH loc AS (
  SELECT r.id, {kind} AS kind, {parent} AS parent
  FROM resource r WHERE r.resource_type = 'Location' AND r.deleted = :no),
beds AS (
  SELECT b.id AS bed, CASE WHEN p.kind = :ward THEN p.id ELSE g.id END AS ward
  FROM loc b LEFT JOIN loc p ON b.parent = 'Location/' || p.id
             LEFT JOIN loc g ON p.parent = 'Location/' || g.id
  WHERE b.kind = :bed),
held AS (
  SELECT DISTINCT substr({ref}, 10) AS bed
  FROM resource r, {entries}
  WHERE r.resource_type = 'Encounter' AND r.deleted = :no
    AND r.id IN (SELECT d.resource_id FROM search_date d WHERE d.resource_type = 'Encounter'
                 AND d.param = 'location-period' AND d.low <= :at_time AND d.high >= :at_time)
    AND {status} NOT IN ('cancelled', 'entered-in-error')
    AND {ref} LIKE 'Location/%' AND {start} <= :at AND ({end} IS NULL OR {end} > :at))
SELECT beds.ward, count(*) AS beds, count(held.bed) AS occupied
FROM beds LEFT JOIN held ON held.bed = beds.bed
WHERE beds.ward IS NOT NULL AND (CAST(:only AS VARCHAR(64)) IS NULL OR beds.ward = CAST(:only AS VARCHAR(64)))
GROUP BY beds.ward ORDER BY beds.ward
"""

_PARTS = {
    "postgresql": {"kind": "r.content #>> '{physicalType,coding,0,code}'",
                   "parent": "r.content #>> '{partOf,reference}'",
                   "entries": "jsonb_array_elements(CASE WHEN jsonb_typeof(r.content -> 'location') = 'array' "
                              "THEN r.content -> 'location' ELSE '[]'::jsonb END) AS e",
                   "status": "r.content ->> 'status'", "ref": "(e.value #>> '{location,reference}')",
                   "start": "(e.value #>> '{period,start}')", "end": "(e.value #>> '{period,end}')"},
    "sqlite": {"kind": "json_extract(r.content, '$.physicalType.coding[0].code')",
               "parent": "json_extract(r.content, '$.partOf.reference')",
               "entries": "json_each(r.content, '$.location') AS e",
               "status": "json_extract(r.content, '$.status')", "ref": "json_extract(e.value, '$.location.reference')",
               "start": "json_extract(e.value, '$.period.start')", "end": "json_extract(e.value, '$.period.end')"},
}


def _percent(part: int, whole: int) -> Decimal:
    if not whole:
        return Decimal("0.0")
    return (Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _figures(name: str, ward: str | None, beds: int, occupied: int) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if ward is not None:
        parts.append({"name": "location", "valueReference": {"reference": f"Location/{ward}"}})
    parts += [{"name": "beds", "valueInteger": beds}, {"name": "occupied", "valueInteger": occupied},
              {"name": "available", "valueInteger": beds - occupied},
              {"name": "occupancy", "valueDecimal": float(_percent(occupied, beds))}]
    return {"name": name, "part": parts}


class Census:
    def __init__(self, ward_codes: WardCodes) -> None:
        self.codes = ward_codes

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        access = repo.access
        # auth: counts every patient's stay, so only a caller who may search all Encounters and Locations
        if not (access.may("Encounter", "s") and access.may("Location", "s")) \
                or access.search_compartment("Encounter") is not None:
            raise FhirError(403, FORBIDDEN, "$census counts every patient's stay: it needs search access to all "
                                            "Encounters and Locations", ("$census",))
        at_text = req.param("date")
        at = utc_instant(at_text) if at_text else instant(datetime.now(UTC))
        if not isinstance(at, str) or not at.endswith("Z"):
            raise FhirError(400, INVALID, f"$census date must be a dateTime, not {at_text!r}", ("date",))
        ward = req.param("ward")
        only = ward.rsplit("/", 1)[-1] if ward else None
        parts = _PARTS["postgresql" if repo.dialect == "postgresql" else "sqlite"]
        physical = self.codes.data["physicalType"]
        # the search index's location-period rows narrow the Encounters to those there at that moment
        stmt = text(_SQL.format(**parts)).bindparams(bindparam("at_time", type_=DATE.c.low.type))
        rows = repo.execute(stmt, {"at": at, "at_time": datetime.fromisoformat(at), "only": only, "no": False,
                                   "ward": physical["ward"], "bed": physical["bed"]}).all()
        params: list[dict[str, Any]] = [{"name": "date", "valueDateTime": at}]
        params += [_figures("ward", r.ward, int(r.beds), int(r.occupied)) for r in rows]
        params.append(_figures("total", None, sum(int(r.beds) for r in rows), sum(int(r.occupied) for r in rows)))
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": params})


def register(server: FhirServer, ward_codes: WardCodes) -> None:
    server.operations.register(Operation("census", Census(ward_codes), DEFINITION,
                                         types=frozenset({"Location"}), read_only=True))
