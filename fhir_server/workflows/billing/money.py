"""Money for billing: Python ``Decimal``, 2 places, ROUND_HALF_UP (0.005 -> 0.01), one currency per tenant.

Every amount the server computes (a line's base, discount and tax, an invoice's totals, a balance) is
rounded once, per line component, with ``cents``; totals are sums of rounded components, so they always add up.
The rule thresholds come from ``rules.json`` in this folder (data, not code): replace it to change them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fhir_server.workflows.rules import rule_violation

CENT = Decimal("0.01")
RULES_FILE = Path(__file__).with_name("rules.json")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def decimal_of(value: Any, where: str) -> Decimal:
    """A FHIR decimal (JSON number or numeric text) as Decimal; 422 naming ``where`` otherwise."""
    if isinstance(value, bool) or value is None:
        raise rule_violation(422, "billing-amount", f"{where} must be a number", (where,))
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise rule_violation(422, "billing-amount", f"{where} must be a number", (where,)) from None
    if not number.is_finite():
        raise rule_violation(422, "billing-amount", f"{where} must be a finite number", (where,))
    return number


def money(value: Decimal, currency: str) -> dict[str, Any]:
    """A FHIR Money; the value goes out as a JSON number with its 2 places (orjson writes floats, so the
    value is a float of the rounded Decimal: exact to the cent for any amount below 10^13)."""
    return {"value": float(cents(value)), "currency": currency}


@dataclass(frozen=True)
class BillingRules:
    currency: str
    default_tax_rate: Decimal
    discount_approval_threshold: Decimal
    discount_approver_roles: frozenset[str]
    service_system: str
    consultation_code: str
    bed_day_code: str

    @classmethod
    def load(cls, path: Path = RULES_FILE) -> BillingRules:
        data = json.loads(path.read_text())
        return cls(data["currency"], Decimal(data["default_tax_rate"]),
                   Decimal(data["discount_approval_threshold"]), frozenset(data["discount_approver_roles"]),
                   data["service_system"], data["consultation_code"], data["bed_day_code"])
