"""The care reports, each one SQL statement over the search index and the stored JSON: bed occupancy and
census, appointments by status and the no-show rate, laboratory volume and turnaround, doctors' workload."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fhir_server.workflows.reports.measure import Query, group, percent, population, rounded, score, stratum

LOCATION_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
TURNAROUND = "https://fhir-server.dev/StructureDefinition/lab-turnaround-time"

_OCCUPANCY = """
WITH loc AS (
  SELECT r.id, {kind} AS kind, {parent} AS parent, {org} AS org
  FROM resource r WHERE r.resource_type = 'Location' AND r.deleted = :no),
beds AS (
  SELECT b.id AS bed, CASE WHEN p.kind = 'wa' THEN p.id ELSE g.id END AS ward
  FROM loc b LEFT JOIN loc p ON b.parent = 'Location/' || p.id
             LEFT JOIN loc g ON p.parent = 'Location/' || g.id
  WHERE b.kind = 'bd'),
stays AS (
  SELECT substr({ref}, 10) AS bed, {start} AS s, {end} AS e
  FROM resource r, {entries}
  WHERE r.resource_type = 'Encounter' AND r.deleted = :no
    AND r.id IN (SELECT d.resource_id FROM search_date d WHERE d.resource_type = 'Encounter'
                 AND d.param = 'location-period' AND d.low < :pe_t AND d.high >= :ps_t)
    AND {status} NOT IN ('cancelled', 'entered-in-error')
    AND {ref} LIKE 'Location/%' AND {start} < :pe AND ({end} IS NULL OR {end} > :ps))
SELECT beds.ward, count(DISTINCT beds.bed) AS beds,
       sum(CASE WHEN stays.bed IS NULL THEN 0
                ELSE {days} END) AS bed_days,
       count(DISTINCT CASE WHEN stays.e IS NULL OR stays.e >= :pe THEN stays.bed END) AS occupied
FROM beds JOIN loc w ON w.id = beds.ward LEFT JOIN stays ON stays.bed = beds.bed
WHERE {where}
GROUP BY beds.ward ORDER BY beds.ward
"""


def occupancy(q: Query) -> list[dict[str, Any]]:
    """Beds, occupied bed-days in the period, average daily census (bed-days / days), occupancy (bed-days /
    (beds x days)) and the census at the period's end, per ward and in total. Department: a ward Location, or
    an Organization managing wards. A period reaching past now ends now (no stay is counted in the future)."""
    sql = q.sql
    where = "1 = 1"
    if q.department and q.department[0] == "Location":
        where = "beds.ward = :dept"
    elif q.department:
        where = "w.org = 'Organization/' || :dept"
    stays = sql.text("location.reference", "e", "value")
    start, end = sql.text("period.start", "e", "value"), sql.text("period.end", "e", "value")
    statement = _OCCUPANCY.format(
        kind=sql.text("physicalType.coding.0.code"), parent=sql.text("partOf.reference"),
        org=sql.text("managingOrganization.reference"), entries=sql.elements("location"),
        status=sql.text("status"), ref=stays, start=start, end=end, where=where,
        days=sql.days(sql.greatest("stays.s", ":ps"), sql.least("COALESCE(stays.e, :pe)", ":pe")))
    rows = q.rows(statement, dept=q.department[1] if q.department else None)
    days = q.period.days
    strata, census = [], []
    for r in rows:
        bed_days = rounded(r.bed_days or 0)
        strata.append(stratum(f"Location/{r.ward}", [population("denominator", r.beds)],
                              score(percent(bed_days, Decimal(r.beds) * days), "%")))
        census.append(stratum(f"Location/{r.ward}", [population("initial-population", r.occupied)],
                              score(rounded(bed_days / days if days else 0), "1")))
    beds = sum(int(r.beds) for r in rows)
    bed_days = sum((rounded(r.bed_days or 0) for r in rows), Decimal(0))
    return [group("bed-occupancy", [population("denominator", beds)],
                  score(percent(bed_days, beds * days), "%"), {"ward": strata}),
            group("census", [population("initial-population", sum(int(r.occupied) for r in rows))],
                  score(rounded(bed_days / days if days else 0), "1"), {"ward": census})]


def _appointment_filter(q: Query) -> str:
    if q.department is None:
        return ""
    if q.department[0] == "Location":
        return ("AND d.resource_id IN (SELECT a.resource_id FROM search_reference a WHERE a.resource_type = "
                "'Appointment' AND a.param = 'location' AND a.target_type = 'Location' AND a.target_id = :dept)")
    return ("AND d.resource_id IN (SELECT a.resource_id FROM search_reference a JOIN search_reference o "
            "ON o.resource_type = 'PractitionerRole' AND o.param = 'organization' AND o.target_type = "
            "'Organization' AND o.target_id = :dept AND a.target_id = o.resource_id "
            "WHERE a.resource_type = 'Appointment' AND a.param = 'actor' AND a.target_type = 'PractitionerRole')")


def _appointments_by_status(q: Query) -> dict[str, int]:
    statement = f"""
SELECT t.code AS status, count(DISTINCT d.resource_id) AS n
FROM search_date d JOIN search_token t ON t.resource_type = 'Appointment' AND t.resource_id = d.resource_id
                                     AND t.param = 'status'
WHERE d.resource_type = 'Appointment' AND d.param = 'date' AND d.low >= :ps_t AND d.low < :pe_t
  {_appointment_filter(q)}
GROUP BY t.code ORDER BY t.code"""
    return {r.status: int(r.n) for r in q.rows(statement, dept=q.department[1] if q.department else None)}


def appointments(q: Query) -> list[dict[str, Any]]:
    """Appointments starting in the period, by status. Department: an Organization (the booked
    PractitionerRole's) or a Location (a participant)."""
    counts = _appointments_by_status(q)
    strata = [stratum(status, [population("initial-population", n)]) for status, n in counts.items()]
    return [group("appointments", [population("initial-population", sum(counts.values()))], None,
                  {"status": strata})]


def no_shows(q: Query) -> list[dict[str, Any]]:
    """No-shows among the appointments due in the period that were kept or missed (noshow / (noshow +
    arrived + fulfilled)); booked and cancelled ones are not yet, or never, due."""
    counts = _appointments_by_status(q)
    missed = counts.get("noshow", 0)
    due = missed + counts.get("arrived", 0) + counts.get("fulfilled", 0)
    return [group("no-show-rate", [population("numerator", missed), population("denominator", due)],
                  score(percent(missed, due), "%"))]


def laboratory(q: Query) -> list[dict[str, Any]]:
    """Orders authored in the period by priority: ordered, completed, mean turnaround (minutes, from the
    orders' lab-turnaround-time). Department: an Organization (orders its practitioners requested)."""
    sql = q.sql
    dept = ""
    if q.department is not None:
        dept = (f"AND r.id IN (SELECT s.resource_id FROM search_reference s WHERE s.resource_type = 'ServiceRequest'"
                f" AND s.param = 'requester' AND s.target_id IN ({q.staff_sql()}))")
    statement = f"""
SELECT x.priority, count(*) AS orders, sum(CASE WHEN x.status = 'completed' THEN 1 ELSE 0 END) AS completed,
       count(x.tat) AS timed, sum(x.tat) AS tat
FROM (SELECT COALESCE({sql.text('priority')}, 'routine') AS priority, {sql.text('status')} AS status,
             CAST({sql.extension('tat_url', 'valueDuration.value')} AS {'NUMERIC' if sql.postgresql else 'REAL'})
               AS tat
      FROM resource r
      WHERE r.resource_type = 'ServiceRequest' AND r.deleted = :no
        AND r.id IN (SELECT d.resource_id FROM search_date d WHERE d.resource_type = 'ServiceRequest'
                     AND d.param = 'authored' AND d.low >= :ps_t AND d.low < :pe_t) {dept}) x
GROUP BY x.priority ORDER BY x.priority"""
    rows = q.rows(statement, tat_url=TURNAROUND, dept=q.department[1] if q.department else None)

    def mean(total: Any, n: Any) -> dict[str, Any]:
        return score(rounded(Decimal(str(total)) / n, "0.1") if n else Decimal("0.0"), "min")

    strata = [stratum(r.priority, [population("initial-population", r.orders), population("numerator", r.completed)],
                      mean(r.tat, r.timed)) for r in rows]
    timed = sum(int(r.timed) for r in rows)
    total = sum((Decimal(str(r.tat or 0)) for r in rows), Decimal(0))
    return [group("lab-volume", [population("initial-population", sum(int(r.orders) for r in rows)),
                                 population("numerator", sum(int(r.completed or 0) for r in rows))], None,
                  {"priority": strata}),
            group("lab-turnaround", [population("initial-population", timed)], mean(total, timed),
                  {"priority": [stratum(r.priority, [population("initial-population", r.timed)],
                                        mean(r.tat, r.timed)) for r in rows]})]


def workload(q: Query) -> list[dict[str, Any]]:
    """Per practitioner: encounters (Encounter.participant) during the period and appointments
    (Appointment.participant) starting in it. Department: an Organization (its PractitionerRoles' practitioners)."""
    dept = f"AND x.who IN ({q.staff_sql()})" if q.department is not None else ""
    # an encounter counts when it overlaps the period (a stay may have only its end); an appointment by its start
    during, starting = "d.low < :pe_t AND d.high >= :ps_t", "d.low >= :ps_t AND d.low < :pe_t"
    part = """SELECT p.target_id AS who, '{kind}' AS kind, p.resource_id AS rid
       FROM search_reference p JOIN search_date d ON d.resource_type = '{rtype}' AND d.resource_id = p.resource_id
                                                  AND d.param = 'date'
       WHERE p.resource_type = '{rtype}' AND p.param = 'practitioner' AND p.target_type = 'Practitioner'
         AND {window}"""
    statement = f"""
SELECT x.who, x.kind, count(DISTINCT x.rid) AS n
FROM ({part.format(kind='encounters', rtype='Encounter', window=during)} UNION ALL
      {part.format(kind='appointments', rtype='Appointment', window=starting)}) x
WHERE 1 = 1 {dept}
GROUP BY x.who, x.kind ORDER BY x.who, x.kind"""
    figures: dict[str, dict[str, int]] = {}
    for r in q.rows(statement, dept=q.department[1] if q.department else None):
        figures.setdefault(r.who, {})[r.kind] = int(r.n)
    out = []
    for kind in ("encounters", "appointments"):
        strata = [stratum(f"Practitioner/{who}", [population("initial-population", f.get(kind, 0))])
                  for who, f in figures.items()]
        out.append(group(f"workload-{kind}", [population("initial-population",
                                                          sum(f.get(kind, 0) for f in figures.values()))],
                         None, {"practitioner": strata}))
    return out
