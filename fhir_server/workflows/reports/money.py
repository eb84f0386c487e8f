"""The money reports: revenue (invoices issued in the period) and collections (payments recorded in it, from
the billing area's ``billing_payment`` index), and outstanding balances (issued invoices not yet paid in full,
by age). Department: the Invoice's ``issuer`` Organization."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from fhir_server.storage.repository import instant
from fhir_server.workflows.reports.measure import Query, group, population, rounded, score, stratum

AGES = (("0-30", 30), ("31-60", 60), ("61-90", 90))  # days since the invoice's date; older: 90+


def _issuer(q: Query, column: str) -> str:
    if q.department is None:
        return ""
    return (f"AND {column} IN (SELECT s.resource_id FROM search_reference s WHERE s.resource_type = 'Invoice' "
            f"AND s.param = 'issuer' AND s.target_type = 'Organization' AND s.target_id = :dept)")


def revenue(q: Query) -> list[dict[str, Any]]:
    sql = q.sql
    invoices = f"""
SELECT count(*) AS n, sum({sql.number('totalGross.value')}) AS gross, sum({sql.number('totalNet.value')}) AS net
FROM resource r
WHERE r.resource_type = 'Invoice' AND r.deleted = :no AND {sql.text('status')} IN ('issued', 'balanced')
  AND r.id IN (SELECT d.resource_id FROM search_date d WHERE d.resource_type = 'Invoice' AND d.param = 'date'
               AND d.low >= :ps_t AND d.low < :pe_t) {_issuer(q, 'r.id')}"""
    payments = f"""
SELECT sum(CASE WHEN p.amount > 0 THEN 1 ELSE 0 END) AS paid_n, sum(CASE WHEN p.amount > 0 THEN p.amount END) AS paid,
       sum(CASE WHEN p.amount < 0 THEN 1 ELSE 0 END) AS refund_n,
       sum(CASE WHEN p.amount < 0 THEN p.amount END) AS refunds
FROM billing_payment p WHERE p.recorded_at >= :ps_t AND p.recorded_at < :pe_t {_issuer(q, 'p.invoice_id')}"""
    dept = q.department[1] if q.department else None
    inv = q.rows(invoices, dept=dept)[0]
    pay = q.rows(payments, dept=dept)[0]
    paid, refunds = rounded(pay.paid), rounded(pay.refunds)
    cur = q.currency
    return [group("revenue", [population("initial-population", inv.n)], score(rounded(inv.gross), cur),
                  {"total": [stratum("net", [population("initial-population", inv.n)], score(rounded(inv.net), cur)),
                             stratum("gross", [population("initial-population", inv.n)],
                                     score(rounded(inv.gross), cur))]}),
            group("collections", [population("initial-population", int(pay.paid_n or 0) + int(pay.refund_n or 0))],
                  score(paid + refunds, cur),
                  {"kind": [stratum("payments", [population("initial-population", pay.paid_n)], score(paid, cur)),
                            stratum("refunds", [population("initial-population", pay.refund_n)],
                                    score(refunds, cur))]})]


def outstanding(q: Query) -> list[dict[str, Any]]:
    """Issued invoices dated before the period's end, their balance (totalGross minus payments and refunds
    recorded before the end), by age at the period's end."""
    sql = q.sql
    end = q.period.end
    limits = {f"age{i}": instant(end - timedelta(days=days)) for i, (_, days) in enumerate(AGES)}
    bucket = " ".join(f"WHEN i.dated >= :age{i} THEN '{name}'" for i, (name, _) in enumerate(AGES))
    statement = f"""
SELECT CASE {bucket} ELSE '90+' END AS age, count(*) AS n, sum(i.gross - COALESCE(p.paid, 0)) AS due
FROM (SELECT r.id, {sql.number('totalGross.value')} AS gross, {sql.text('date')} AS dated
      FROM resource r
      WHERE r.resource_type = 'Invoice' AND r.deleted = :no AND {sql.text('status')} IN ('issued', 'balanced')
        AND r.id IN (SELECT d.resource_id FROM search_date d WHERE d.resource_type = 'Invoice' AND d.param = 'date'
                     AND d.low < :pe_t) {_issuer(q, 'r.id')}) i
LEFT JOIN (SELECT invoice_id, sum(amount) AS paid FROM billing_payment WHERE recorded_at < :pe_t
           GROUP BY invoice_id) p ON p.invoice_id = i.id
WHERE i.gross - COALESCE(p.paid, 0) > 0
GROUP BY 1 ORDER BY 1"""
    rows = {r.age: r for r in q.rows(statement, dept=q.department[1] if q.department else None, **limits)}
    cur = q.currency
    strata = [stratum(name, [population("initial-population", rows[name].n if name in rows else 0)],
                      score(rounded(rows[name].due if name in rows else 0), cur))
              for name in [a for a, _ in AGES] + ["90+"]]
    total = sum((rounded(r.due) for r in rows.values()), Decimal(0))
    return [group("outstanding", [population("initial-population", sum(int(r.n) for r in rows.values()))],
                  score(total, cur), {"age": strata})]
