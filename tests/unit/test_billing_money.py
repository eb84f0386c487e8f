"""Billing arithmetic (fhir_server/workflows/billing/money.py, pricing.py): Decimal, 2 places, ROUND_HALF_UP."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fhir_server.errors import FhirError
from fhir_server.workflows.billing.money import BillingRules, cents
from fhir_server.workflows.billing.pricing import price_line, price_of
from fhir_server.workflows.rules import RULE_SYSTEM

RULES = BillingRules.load()


@pytest.mark.parametrize(("value", "rounded"), [("1.025", "1.03"), ("1.015", "1.02"), ("2.675", "2.68"),
                                                ("-1.025", "-1.03"), ("0.004", "0.00"), ("10", "10.00")])
def test_cents_round_half_up(value: str, rounded: str) -> None:
    assert cents(Decimal(value)) == Decimal(rounded)
    assert str(cents(Decimal(value))) == rounded


def _definition(*components: dict[str, object]) -> dict[str, object]:
    return {"resourceType": "ChargeItemDefinition", "id": "x", "url": "https://example.org/x", "status": "active",
            "propertyGroup": [{"priceComponent": [{"type": "base", "amount": {"value": 2.5, "currency": "INR"}},
                                                  *components]}]}


def test_line_default_tax_catalogue_discount_and_manual_discount() -> None:
    price = price_of(_definition({"type": "discount", "factor": 0.18}), RULES)
    assert price.tax_rate == Decimal("0.05")  # rules.json's default
    line = price_line(Decimal(10), price, Decimal(0))
    assert (line.base, line.catalogue_discount, line.tax, line.gross) == \
        (Decimal("25.00"), Decimal("4.50"), Decimal("1.03"), Decimal("21.53"))
    manual = price_line(Decimal(10), price, Decimal("0.50"))
    assert (manual.net, manual.tax) == (Decimal("20.00"), Decimal("1.00"))


def test_exempt_service_and_a_price_without_base() -> None:
    exempt = price_line(Decimal(3), price_of(_definition({"type": "tax", "factor": 0}), RULES), Decimal(0))
    assert (exempt.tax, exempt.gross) == (Decimal(0), Decimal("7.50"))
    with pytest.raises(FhirError) as caught:
        price_of({"resourceType": "ChargeItemDefinition", "id": "y", "propertyGroup": []}, RULES)
    outcome = caught.value.outcome()
    assert outcome["issue"][0]["details"]["coding"][0] == {"system": RULE_SYSTEM, "code": "billing-price"}
