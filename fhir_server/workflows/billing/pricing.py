"""Prices from the price list: ChargeItemDefinitions (``propertyGroup.priceComponent`` base / tax / discount).

A ChargeItemDefinition prices one service: its ``code`` names the service (any coding: a LOINC test, a drug
code, ``billing-service#consultation``), its first ``propertyGroup`` holds the components:

- ``base``: ``amount`` = the unit price (required);
- ``tax``: ``factor`` = the rate (0.05 = 5 %); absent: the default rate of rules.json; 0: an exempt service;
- ``discount`` (optional): a standing catalogue discount, ``factor`` of the base or ``amount`` per unit.

``applicability`` is not evaluated (every group applies): the price list is what the hospital publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_server.storage.repository import Repository
from fhir_server.workflows.billing.money import BillingRules, cents, decimal_of
from fhir_server.workflows.rules import rule_violation

CID = "ChargeItemDefinition"


@dataclass(frozen=True)
class Price:
    url: str
    unit: Decimal
    tax_rate: Decimal
    discount_factor: Decimal
    discount_per_unit: Decimal


@dataclass(frozen=True)
class LineAmounts:
    quantity: Decimal
    base: Decimal  # quantity x unit price
    catalogue_discount: Decimal
    discount: Decimal  # catalogue + the invoice writer's, as a positive reduction
    tax_rate: Decimal
    tax: Decimal

    @property
    def net(self) -> Decimal:
        return self.base - self.discount

    @property
    def gross(self) -> Decimal:
        return self.net + self.tax


def price_of(definition: dict[str, Any], rules: BillingRules) -> Price:
    where = "ChargeItemDefinition.propertyGroup.priceComponent"
    groups = definition.get("propertyGroup") or []
    components = [c for g in groups for c in g.get("priceComponent") or []]
    base = next((c for c in components if c.get("type") == "base"), None)
    amount = (base or {}).get("amount") or {}
    if "value" not in amount:
        raise rule_violation(422, "billing-price", f"{CID}/{definition.get('id')} has no base price component "
                                                   "with an amount", (where,))
    if amount.get("currency", rules.currency) != rules.currency:
        raise rule_violation(422, "billing-currency", f"{CID}/{definition.get('id')} is priced in "
                                                      f"{amount.get('currency')}, not {rules.currency}", (where,))
    tax = next((c for c in components if c.get("type") == "tax"), None)
    rate = decimal_of(tax["factor"], where + ".factor") if tax and "factor" in tax else rules.default_tax_rate
    discount = next((c for c in components if c.get("type") == "discount"), None) or {}
    factor = decimal_of(discount["factor"], where + ".factor") if "factor" in discount else Decimal(0)
    per_unit = abs(decimal_of(discount["amount"].get("value"), where + ".amount")) if "amount" in discount \
        else Decimal(0)
    return Price(str(definition.get("url") or ""), decimal_of(amount["value"], where + ".amount"), rate,
                 abs(factor), per_unit)


def definition_by_url(repo: Repository, url: str) -> dict[str, Any] | None:
    ids = repo.find_ids(CID, [("url", url), ("status", "active")], limit=2)
    return repo.read(CID, ids[0]).content if ids else None


def price_list(repo: Repository) -> dict[tuple[str, str], dict[str, Any]]:
    """(system, code) -> active ChargeItemDefinition: the hospital's price list, a few hundred entries."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    ids = repo.find_ids(CID, [("status", "active")], limit=5000)
    repo.preload([(CID, rid) for rid in ids])  # one statement, not one per entry; each read still checks access
    for rid in ids:
        content = repo.read(CID, rid).content or {}
        for coding in (content.get("code") or {}).get("coding") or []:
            out.setdefault((coding.get("system", ""), coding.get("code", "")), content)
    return out


def find_price(prices: dict[tuple[str, str], dict[str, Any]], codings: list[dict[str, Any]]) -> dict[str, Any] | None:
    for coding in codings:
        found = prices.get((coding.get("system", ""), coding.get("code", "")))
        if found is not None:
            return found
    return None


def price_line(quantity: Decimal, price: Price, extra_discount: Decimal) -> LineAmounts:
    base = cents(quantity * price.unit)
    catalogue = cents(base * price.discount_factor + quantity * price.discount_per_unit)
    discount = catalogue + cents(extra_discount)
    tax = cents((base - discount) * price.tax_rate) if discount <= base else Decimal(0)
    return LineAmounts(quantity, base, catalogue, discount, price.tax_rate, tax)
