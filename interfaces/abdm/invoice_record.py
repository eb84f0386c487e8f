"""InvoiceRecord: the billing workflow's Invoices of a visit (fhir_server/workflows/billing) as the IG's
Invoice and ChargeItem profiles want them (records.json ``invoice``).

An Encounter's invoices are the issued (or paid: balanced) Invoices whose lines charge a ChargeItem made for
that Encounter (``ChargeItem.context``). The IG asks of an Invoice one identifier, a type coded from
ndhm-billing-codes, a date, and each price component coded from ndhm-price-components; of a ChargeItem its
code as an ndhm-billing-codes category with the service itself as ``productCodeableConcept``. What the
hospital paid is said by the Invoice's own status and ``totalGross``; its PaymentReconciliations stay out (the
InvoiceRecord's section admits the Invoice alone).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fhir_server.storage.repository import Repository
from interfaces.abdm.records import MAPPING, DateRange, _own_date

CONFIG: dict[str, Any] = MAPPING["invoice"]
BILLED = ("issued", "balanced")


def encounter_invoices(repo: Repository, encounter_ref: str, encounter: dict[str, Any],
                       dates: DateRange) -> list[dict[str, Any]]:
    charges = {f"ChargeItem/{i}" for i in repo.find_ids("ChargeItem", [("context", encounter_ref)], limit=1000)}
    subject = str((encounter.get("subject") or {}).get("reference", ""))
    if not charges or not subject:
        return []
    ids = repo.find_ids("Invoice", [("subject", subject)], limit=1000)
    out = []
    for version in repo.read_many([("Invoice", i) for i in ids]):
        invoice = version.content or {}
        lines = {str((line.get("chargeItemReference") or {}).get("reference", "")) for line in
                 invoice.get("lineItem") or []}
        if invoice.get("status") in BILLED and lines & charges and dates.covers(_invoice_date(invoice)):
            out.append(invoice)
    return sorted(out, key=lambda i: (_invoice_date(i), i["id"]))


def _invoice_date(invoice: dict[str, Any]) -> str:
    return _own_date(invoice) or str((invoice.get("meta") or {}).get("lastUpdated", ""))


def _billing(code: str) -> dict[str, Any]:
    return {"coding": [{"system": CONFIG["billingSystem"], "code": code, "display": CONFIG["billingCodes"][code]}]}


def _price(code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": CONFIG["priceSystem"], "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


def _coded(concept: Any) -> bool:
    codings = (concept or {}).get("coding") or [] if isinstance(concept, dict) else []
    return len(codings) == 1 and all(codings[0].get(k) for k in ("system", "code", "display"))


def conform(resource: dict[str, Any], encounter: dict[str, Any] | None, identifier_system: str) -> None:
    """Shape an Invoice or ChargeItem (a copy, still with its id and meta) for the IG's profile."""
    if resource.get("resourceType") == "Invoice":
        _invoice(resource, encounter, identifier_system)
    else:
        _charge_item(resource)


def _invoice(invoice: dict[str, Any], encounter: dict[str, Any] | None, identifier_system: str) -> None:
    if not invoice.get("identifier"):  # the invoice number is our id for it
        invoice["identifier"] = [{"system": identifier_system.rsplit("/", 1)[0] + "/invoices", "value": invoice["id"]}]
    invoice["identifier"] = invoice["identifier"][:1]
    if not _coded(invoice.get("type")):
        klass = ((encounter or {}).get("class") or {}).get("code", "")
        invoice["type"] = _billing(CONFIG["invoiceType"].get(klass, CONFIG["invoiceTypeDefault"]))
    invoice.setdefault("date", _invoice_date(invoice))
    for line in invoice.get("lineItem") or []:
        line["priceComponent"] = [c for component in line.get("priceComponent") or [] for c in _components(component)]


def _components(component: dict[str, Any]) -> list[dict[str, Any]]:
    kind = component.get("type")
    original = (component.get("code") or {}).get("coding", [{}])[0].get("code")
    if kind == "tax":  # GST as its CGST and SGST halves (the odd paisa to the first)
        amount = component.get("amount") or {}
        total = Decimal(str(amount.get("value", 0)))
        first = (total / 2).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        halves = []
        for (code, display), value in zip(CONFIG["taxSplit"], (first, total - first), strict=True):
            half = {**component, "code": _price(code, display), "amount": {**amount, "value": float(value)}}
            if "factor" in component:
                half["factor"] = float(Decimal(str(component["factor"])) / 2)
            halves.append(half)
        return halves
    code, display = CONFIG["priceComponents"].get(kind, CONFIG["priceComponents"]["informational"])
    if not _coded(component.get("code")) or component["code"]["coding"][0].get("system") != CONFIG["priceSystem"]:
        component = {**component, "code": _price(code, display, original)}
    return [component]


def _charge_item(item: dict[str, Any]) -> None:
    code = item.get("code") or {}
    if _coded(code) and code["coding"][0].get("system") == CONFIG["billingSystem"]:
        return
    codings = code.get("coding") or []
    category = CONFIG["chargeCategoryDefault"]
    for rule in CONFIG["chargeCategory"]:
        if any(c.get("system") == rule["system"] and rule.get("code", c.get("code")) == c.get("code")
               for c in codings):
            category = rule["category"]
            break
    if "productReference" not in item and "productCodeableConcept" not in item and code:
        item["productCodeableConcept"] = code  # what was charged: the service or product itself
    item["code"] = _billing(category)
    item.setdefault("quantity", {"value": 1})
