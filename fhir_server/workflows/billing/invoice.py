"""Invoice rules (issue 18 item 6): the server prices every draft, checks totals, discounts and statuses.

On each write of a draft (or of an invoice created issued), every ``lineItem`` must reference a billable
ChargeItem of the invoice's subject; the server writes the line's ``priceComponent`` from the ChargeItem's
ChargeItemDefinition (``base`` = quantity x unit price with ``factor`` = quantity, the catalogue ``discount``
coded ``catalogue-discount``, the writer's own ``discount``, ``tax`` with ``factor`` = the rate) and the
invoice's ``totalPriceComponent``, ``totalNet`` (base - discounts) and ``totalGross`` (net + tax). Totals a
client sends must equal these (422 ``billing-invoice-total``). Once issued, the priced content is frozen.

Statuses: draft -> issued | cancelled | entered-in-error; issued -> balanced (paid in full) | cancelled
(nothing paid); balanced -> issued (after a refund). Issuing bills the ChargeItems (``billed``) and, for a
patient with an active Coverage, creates the Claim (claim.py); cancelling makes them billable again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.repository import Repository
from fhir_server.workflows.billing import claim, ledger
from fhir_server.workflows.billing.money import BillingRules, cents, decimal_of, money
from fhir_server.workflows.billing.pricing import LineAmounts, definition_by_url, price_line, price_of
from fhir_server.workflows.rules import rule_violation

TRANSITIONS: dict[str | None, set[str]] = {
    None: {"draft", "issued"},
    "draft": {"draft", "issued", "cancelled", "entered-in-error"},
    "issued": {"issued", "balanced", "cancelled"},
    "balanced": {"balanced", "issued"},
    "cancelled": {"cancelled"},
    "entered-in-error": {"entered-in-error"},
}
FROZEN = ("subject", "lineItem", "totalPriceComponent", "totalNet", "totalGross")
CATALOGUE_DISCOUNT = "catalogue-discount"
APPROVER = "discount-approver"


def _ref_id(reference: Any, rtype: str) -> str | None:
    ref = (reference or {}).get("reference") or "" if isinstance(reference, dict) else ""
    return ref.split("/", 1)[1] if ref.startswith(f"{rtype}/") and "/" not in ref[len(rtype) + 1:] else None


def _is_catalogue(component: dict[str, Any], rules: BillingRules) -> bool:
    return any(c.get("system") == rules.service_system and c.get("code") == CATALOGUE_DISCOUNT
               for c in (component.get("code") or {}).get("coding") or [])


def manual_discounts(invoice: dict[str, Any], rules: BillingRules) -> list[Decimal]:
    """The writer's own discount per line (a positive reduction; a client may write it negative too)."""
    out = []
    for i, line in enumerate(invoice.get("lineItem") or []):
        total = Decimal(0)
        for j, c in enumerate(line.get("priceComponent") or []):
            if c.get("type") == "discount" and not _is_catalogue(c, rules):
                total += abs(decimal_of((c.get("amount") or {}).get("value"),
                                        f"Invoice.lineItem[{i}].priceComponent[{j}].amount.value"))
        out.append(cents(total))
    return out


class InvoiceRules:
    def __init__(self, rules: BillingRules) -> None:
        self.rules = rules

    # --- hooks ------------------------------------------------------------------------------------------------

    def before_validate(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Invoice" or repo is None:
            return
        prev = event.previous.content if event.previous is not None and not event.previous.deleted else None
        old = prev.get("status") if prev else None
        invoice = event.resource
        if invoice is None:
            return
        new = invoice.get("status")
        if new not in TRANSITIONS.get(old, set()):
            raise rule_violation(409 if old else 422, "billing-invoice-status",
                                 f"An invoice may not go from {old or 'nothing'} to {new}; allowed: "
                                 f"{', '.join(sorted(TRANSITIONS.get(old, set())))}", ("Invoice.status",))
        if old in (None, "draft"):
            self._price(repo, invoice, prev)
        else:
            changed = [k for k in FROZEN if invoice.get(k) != prev.get(k)] if prev else []
            if changed:
                raise rule_violation(409, "billing-invoice-frozen", f"An {old} invoice's {changed[0]} cannot change; "
                                                                    "cancel it and invoice again",
                                     (f"Invoice.{changed[0]}",))
        if event.previous is not None and old is not None and new != old and old != "draft":
            self._check_paid(repo, event.previous.id, invoice, old, new)
        if new == "issued" and old in (None, "draft"):
            if not invoice.get("lineItem"):
                raise rule_violation(422, "billing-invoice-empty", "An invoice without lines cannot be issued",
                                     ("Invoice.lineItem",))
            invoice.setdefault("date", datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))

    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Invoice" or repo is None:
            return
        old = (event.previous.content or {}).get("status") if event.previous and not event.previous.deleted else None
        if event.resource is None:  # a delete (no BEFORE_VALIDATE for those)
            if old not in (None, "draft", "entered-in-error"):
                raise rule_violation(409, "billing-invoice-delete", f"An {old} invoice is never deleted: cancel it "
                                                                    "(or refund it) instead", ("Invoice.status",))
            return
        new = event.resource.get("status")
        if new == "issued" and old in (None, "draft"):
            self._set_charge_items(repo, event.resource, "billable", "billed")
            claim.claim_on_issue(repo, event.resource, self.rules)
        elif new == "cancelled" and old == "issued":
            self._set_charge_items(repo, event.resource, "billed", "billable")

    # --- rules ------------------------------------------------------------------------------------------------

    def _check_paid(self, repo: Repository, invoice_id: str, invoice: dict[str, Any], old: str, new: str) -> None:
        paid = ledger.paid(repo, invoice_id)
        gross = decimal_of((invoice.get("totalGross") or {}).get("value", 0), "Invoice.totalGross.value")
        if new == "balanced" and paid != gross:
            raise rule_violation(409, "billing-invoice-not-paid", f"The invoice is balanced only when paid in full: "
                                                                  f"{paid} of {gross} paid", ("Invoice.status",))
        if new == "cancelled" and paid != 0:
            raise rule_violation(409, "billing-invoice-paid", f"{paid} has been paid on this invoice: refund it "
                                                              "before cancelling", ("Invoice.status",))
        if new == "issued" and old == "balanced" and paid >= gross:
            raise rule_violation(409, "billing-invoice-not-paid", "A balanced invoice returns to issued only after "
                                                                  "a refund", ("Invoice.status",))

    def _price(self, repo: Repository, invoice: dict[str, Any], prev: dict[str, Any] | None) -> None:
        rules = self.rules
        subject = (invoice.get("subject") or {}).get("reference")
        if not _ref_id(invoice.get("subject"), "Patient"):
            raise rule_violation(422, "billing-invoice-subject", "Invoice.subject must reference the Patient billed",
                                 ("Invoice.subject",))
        extra = manual_discounts(invoice, rules)
        seen: set[str] = set()
        amounts: list[LineAmounts] = []
        for i, line in enumerate(invoice.get("lineItem") or []):
            where = f"Invoice.lineItem[{i}]"
            cid = _ref_id(line.get("chargeItemReference"), "ChargeItem")
            if cid is None:
                raise rule_violation(422, "billing-line-charge-item", "Each invoice line references the ChargeItem "
                                     "it bills (chargeItemReference)", (f"{where}.chargeItemReference",))
            if cid in seen:
                raise rule_violation(422, "billing-line-duplicate", f"ChargeItem/{cid} is on two lines",
                                     (f"{where}.chargeItemReference",))
            seen.add(cid)
            item = repo.read("ChargeItem", cid).content or {}
            if (item.get("subject") or {}).get("reference") != subject:
                raise rule_violation(422, "billing-line-subject", f"ChargeItem/{cid} is for another patient",
                                     (f"{where}.chargeItemReference",))
            if item.get("status") != "billable":
                raise rule_violation(409, "billing-charge-item-billed", f"ChargeItem/{cid} is {item.get('status')}, "
                                     "not billable (already on an issued invoice?)", (f"{where}.chargeItemReference",))
            urls = item.get("definitionCanonical") or []
            definition = definition_by_url(repo, urls[0]) if urls else None
            if definition is None:
                raise rule_violation(422, "billing-no-price", f"ChargeItem/{cid} has no active ChargeItemDefinition "
                                     "pricing it", (f"{where}.chargeItemReference",))
            quantity = decimal_of((item.get("quantity") or {}).get("value", 1), "ChargeItem.quantity.value")
            amounts.append(line_amounts := price_line(quantity, price_of(definition, rules), extra[i]))
            if line_amounts.discount > line_amounts.base:
                raise rule_violation(422, "billing-discount-exceeds-subtotal", f"The line's discounts "
                                     f"({line_amounts.discount}) exceed its amount ({line_amounts.base})",
                                     (f"{where}.priceComponent",))
            line.clear()
            line.update(self._line(i + 1, cid, line_amounts, extra[i]))
        if not invoice.get("lineItem"):
            invoice.pop("lineItem", None)  # a draft not yet filled ([] is no valid FHIR JSON)
        self._check_approval(repo, invoice, prev, sum(extra, Decimal(0)))
        self._totals(invoice, amounts)

    def _line(self, sequence: int, cid: str, a: LineAmounts, manual: Decimal) -> dict[str, Any]:
        cur, rules = self.rules.currency, self.rules
        components: list[dict[str, Any]] = [{"type": "base", "factor": float(a.quantity), "amount": money(a.base, cur)}]
        if a.catalogue_discount:
            components.append({"type": "discount", "code": {"coding": [{"system": rules.service_system,
                                                                        "code": CATALOGUE_DISCOUNT}]},
                               "amount": money(-a.catalogue_discount, cur)})
        if manual:
            components.append({"type": "discount", "amount": money(-manual, cur)})
        tax: dict[str, Any] = {"type": "tax", "factor": float(a.tax_rate), "amount": money(a.tax, cur)}
        if a.tax_rate == 0:
            tax["code"] = {"coding": [{"system": rules.service_system, "code": "tax-exempt"}]}
        components.append(tax)
        return {"sequence": sequence, "chargeItemReference": {"reference": f"ChargeItem/{cid}"},
                "priceComponent": components}

    def _totals(self, invoice: dict[str, Any], amounts: list[LineAmounts]) -> None:
        cur = self.rules.currency
        base = sum((a.base for a in amounts), Decimal(0))
        discount = sum((a.discount for a in amounts), Decimal(0))
        tax = sum((a.tax for a in amounts), Decimal(0))
        net, gross = base - discount, base - discount + tax
        for name, value in (("totalNet", net), ("totalGross", gross)):
            sent = invoice.get(name)
            if sent is not None and ((sent.get("currency") or cur) != cur
                                     or decimal_of(sent.get("value"), f"Invoice.{name}.value") != value):
                raise rule_violation(422, "billing-invoice-total", f"Invoice.{name} is {sent.get('value')} "
                                     f"{sent.get('currency') or ''}, but its lines add up to {value} {cur}",
                                     (f"Invoice.{name}",))
            invoice[name] = money(value, cur)
        invoice["totalPriceComponent"] = [{"type": "base", "amount": money(base, cur)},
                                          {"type": "discount", "amount": money(-discount, cur)},
                                          {"type": "tax", "amount": money(tax, cur)}]

    def _check_approval(self, repo: Repository, invoice: dict[str, Any], prev: dict[str, Any] | None,
                        discount: Decimal) -> None:
        """Discounts above the threshold need a discount approver (rules.json roles: a billing officer or an
        admin; a backend granted system/*.write): the approver's write records them as Invoice.participant."""
        rules = self.rules
        approvers = [p for p in invoice.get("participant") or [] if _is_approver(p, rules)]
        others = [p for p in invoice.get("participant") or [] if not _is_approver(p, rules)]
        if discount <= rules.discount_approval_threshold:
            return
        access = repo.access
        role = getattr(access, "role", None)
        if role in rules.discount_approver_roles or (role is None and access.administers()):
            who = getattr(access, "fhir_user", None)
            actor = {"reference": who} if who else {"display": getattr(access, "subject", None) or "the server"}
            invoice["participant"] = [*others, {"role": {"coding": [{"system": rules.service_system,
                                                                     "code": APPROVER}]}, "actor": actor}]
            return
        before = [p for p in (prev or {}).get("participant") or [] if _is_approver(p, rules)]
        approved_before = prev is not None and bool(before) and approvers == before \
            and sum(manual_discounts(prev, rules), Decimal(0)) == discount
        if not approved_before:
            raise rule_violation(422, "billing-discount-approval", f"A discount of {discount} is above "
                                 f"{rules.discount_approval_threshold}: only a "
                                 f"{' or '.join(sorted(rules.discount_approver_roles))} may grant it",
                                 ("Invoice.lineItem.priceComponent",))

    def _set_charge_items(self, repo: Repository, invoice: dict[str, Any], old: str, new: str) -> None:
        for i, line in enumerate(invoice.get("lineItem") or []):
            cid = _ref_id(line.get("chargeItemReference"), "ChargeItem")
            current = repo.current("ChargeItem", cid, for_update=True) if cid else None
            if current is None or current.content is None:
                continue
            if current.content.get("status") != old:
                raise rule_violation(409, "billing-charge-item-billed", f"ChargeItem/{cid} is "
                                     f"{current.content.get('status')}, not {old}",
                                     (f"Invoice.lineItem[{i}].chargeItemReference",))
            repo.update("ChargeItem", current.id, {**current.content, "status": new})


def _is_approver(participant: dict[str, Any], rules: BillingRules) -> bool:
    return any(c.get("system") == rules.service_system and c.get("code") == APPROVER
               for c in (participant.get("role") or {}).get("coding") or [])
