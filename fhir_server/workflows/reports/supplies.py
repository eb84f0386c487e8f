"""The pharmacy's stock report: units and value on hand, and the stock expiring within 90 days of the period's
end (or already expired), per store. Stock is the pharmacy area's ``medication-stock`` Basic records (one per
batch and store); a batch's expiry is its Medication's ``batch.expirationDate``; its value is the units times
the base price of the product in the price list (an active ChargeItemDefinition with the batch's code; a
product without a price counts as 0). Department: a store Location, or an Organization managing stores."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from fhir_server.workflows.reports.measure import Query, group, population, rounded, score, stratum

PHARMACY = "https://fhir-server.dev/CodeSystem/pharmacy"
EXT_LOCATION = "https://fhir-server.dev/StructureDefinition/stock-location"
EXT_QUANTITY = "https://fhir-server.dev/StructureDefinition/stock-quantity"
EXPIRING_DAYS = 90


def stock(q: Query) -> list[dict[str, Any]]:
    sql = q.sql
    real = "NUMERIC" if sql.postgresql else "REAL"
    where = ""
    if q.department is not None and q.department[0] == "Location":
        where = "AND s.store = 'Location/' || :dept"
    elif q.department is not None:
        where = ("AND s.store IN (SELECT 'Location/' || o.resource_id FROM search_reference o WHERE "
                 "o.resource_type = 'Location' AND o.param = 'organization' AND o.target_id = :dept)")
    statement = f"""
WITH price AS (
  SELECT {sql.text('system', 'c', 'value')} AS sys, {sql.text('code', 'c', 'value')} AS code,
         max(CAST({sql.text('amount.value', 'pc', 'value')} AS {real})) AS unit
  FROM resource r, {sql.elements('code.coding', 'r', 'c')}, {sql.elements('propertyGroup.0.priceComponent', 'r', 'pc')}
  WHERE r.resource_type = 'ChargeItemDefinition' AND r.deleted = :no AND {sql.text('status')} = 'active'
    AND {sql.text('type', 'pc', 'value')} = 'base'
  GROUP BY 1, 2),
s AS (
  SELECT CAST({sql.extension('qty_url', 'valueQuantity.value')} AS {real}) AS units,
         {sql.extension('loc_url', 'valueReference.reference')} AS store,
         substr({sql.text('subject.reference')}, 12) AS batch
  FROM resource r
  WHERE r.resource_type = 'Basic' AND r.deleted = :no
    AND r.id IN (SELECT t.resource_id FROM search_token t WHERE t.resource_type = 'Basic' AND t.param = 'code'
                 AND t.system = :pharmacy AND t.code = 'medication-stock'))
SELECT s.store, count(*) AS batches, sum(s.units) AS units, sum(s.units * COALESCE(price.unit, 0)) AS value,
       sum(CASE WHEN x.expiry < :soon THEN 1 ELSE 0 END) AS expiring_batches,
       sum(CASE WHEN x.expiry < :soon THEN s.units ELSE 0 END) AS expiring_units,
       sum(CASE WHEN x.expiry < :soon THEN s.units * COALESCE(price.unit, 0) ELSE 0 END) AS expiring_value,
       sum(CASE WHEN x.expiry < :today THEN s.units ELSE 0 END) AS expired_units
FROM s JOIN (SELECT m.id, {sql.text('batch.expirationDate', 'm')} AS expiry,
                    {sql.text('code.coding.0.system', 'm')} AS sys, {sql.text('code.coding.0.code', 'm')} AS code
             FROM resource m WHERE m.resource_type = 'Medication' AND m.deleted = :no) x ON x.id = s.batch
       LEFT JOIN price ON price.sys = x.sys AND price.code = x.code
WHERE s.units > 0 {where}
GROUP BY s.store ORDER BY s.store"""
    end = q.period.end
    rows = q.rows(statement, qty_url=EXT_QUANTITY, loc_url=EXT_LOCATION, pharmacy=PHARMACY,
                  soon=(end + timedelta(days=EXPIRING_DAYS)).date().isoformat(), today=end.date().isoformat(),
                  dept=q.department[1] if q.department else None)
    cur = q.currency
    units = sum(int(r.units or 0) for r in rows)
    value = sum((rounded(r.value) for r in rows), Decimal(0))
    exp_units = sum(int(r.expiring_units or 0) for r in rows)
    exp_value = sum((rounded(r.expiring_value) for r in rows), Decimal(0))
    return [group("stock-value", [population("initial-population", units)], score(value, cur),
                  {"store": [stratum(r.store, [population("initial-population", int(r.units or 0))],
                                     score(rounded(r.value), cur)) for r in rows]}),
            group("stock-expiring", [population("initial-population", exp_units),
                                     population("numerator", sum(int(r.expired_units or 0) for r in rows))],
                  score(exp_value, cur),
                  {"store": [stratum(r.store, [population("initial-population", int(r.expiring_units or 0)),
                                               population("numerator", int(r.expired_units or 0))],
                                     score(rounded(r.expiring_value), cur)) for r in rows]})]


def demographics(q: Query) -> list[dict[str, Any]]:
    """Patients (not deleted, not marked inactive) by gender and by age band at the period's end (born by then).
    Department: ``Patient.managingOrganization``."""
    sql = q.sql
    end = q.period.end.date()

    def born_after(years: int) -> str:
        try:
            return end.replace(year=end.year - years).isoformat()
        except ValueError:  # 29 February
            return end.replace(year=end.year - years, day=28).isoformat()

    dept = ("AND r.id IN (SELECT o.resource_id FROM search_reference o WHERE o.resource_type = 'Patient' "
            "AND o.param = 'organization' AND o.target_id = :dept)") if q.department is not None else ""
    statement = f"""
SELECT COALESCE({sql.text('gender')}, 'unknown') AS gender,
       CASE WHEN {sql.text('birthDate')} IS NULL THEN 'unknown' WHEN {sql.text('birthDate')} > :b18 THEN '0-17'
            WHEN {sql.text('birthDate')} > :b40 THEN '18-39' WHEN {sql.text('birthDate')} > :b65 THEN '40-64'
            ELSE '65+' END AS band,
       count(*) AS n
FROM resource r
WHERE r.resource_type = 'Patient' AND r.deleted = :no
  AND ({sql.text('active')} IS NULL OR {sql.text('active')} <> {sql.false})
  AND COALESCE({sql.text('birthDate')}, '') < :born_by {dept}
GROUP BY 1, 2 ORDER BY 1, 2"""
    rows = q.rows(statement, b18=born_after(18), b40=born_after(40), b65=born_after(65),
                  born_by=(end + timedelta(days=1)).isoformat(), dept=q.department[1] if q.department else None)
    genders: dict[str, int] = {}
    bands: dict[str, int] = {}
    for r in rows:
        genders[r.gender] = genders.get(r.gender, 0) + int(r.n)
        bands[r.band] = bands.get(r.band, 0) + int(r.n)
    order = ["0-17", "18-39", "40-64", "65+", "unknown"]
    return [group("patients", [population("initial-population", sum(genders.values()))], None,
                  {"gender": [stratum(g, [population("initial-population", n)]) for g, n in sorted(genders.items())],
                   "age": [stratum(b, [population("initial-population", bands[b])]) for b in order if b in bands]})]
