"""Low-stock and expiring-stock alerts as Flags, each with a Communication for the notification channel.

- low-stock: a store's unexpired quantity of a product below its reorder level (rules.json). Flag subject the
  store Location; one active Flag per store and product (identifier ALERT_KEY ``low-stock Location/L <system>
  <code>``), made inactive (period.end) once a delivery brings the stock back to the level.
- expiring-stock: a batch with stock that expires within 90 days (rules.json), or has expired. Flag subject the
  batch Medication; one per store and batch (``expiring Location/L/Medication/B``), inactive once the batch's
  stock there is 0.
A new Flag also gets a Communication (status preparation, category alert, about the Flag and identified by
it (ALERT_FLAG ``Flag/id``), recipient the
store's managingOrganization when it has one) for the notification channel to send. Reviewed after every
receipt and dispense for the products moved, and for everything by ``POST [base]/$pharmacy-stock-check``
(run it daily, e.g. from cron, for batches that come near their expiry while nothing moves).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.workflows.pharmacy.common import (
    ALERT_KEY,
    EXT_LOCATION,
    PHARMACY,
    STOCK_PRODUCT,
    extension,
    is_local,
    now,
    number,
    parse_time,
    ref_id,
    role_of,
    stamp,
)
from fhir_server.workflows.pharmacy.knowledge import Knowledge
from fhir_server.workflows.pharmacy.stock import Holding, holdings, lock_store, product_key
from fhir_server.workflows.rules import rule_violation

ALERT_REASON = "pharmacy alerts: low-stock and expiring-stock Flags and their Communications"
ALERT_FLAG = "https://fhir-server.dev/identifier/pharmacy-alert-flag"  # Communication.identifier: Flag/id
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"


def review(repo: Repository, knowledge: Knowledge, location: str, products: list[tuple[str, str]],
           moved: set[str] | None = None) -> int:
    """Raise or clear the alerts of these products at this store (under the store's lock). ``moved``: the batches
    a movement just changed; then only those and the batches with stock near expiry are looked at (an old
    empty batch's alert was closed when it emptied); None looks at every batch. Returns the Flags raised."""
    raised = 0
    with repo.acting_as(as_system(ALERT_REASON)):
        lock_store(repo, location)
        for product in dict.fromkeys(products):
            stock = holdings(repo, location, [product])
            raised += _low_stock(repo, knowledge, location, product, stock)
            for holding in stock:
                if moved is None or holding.batch.id in moved or (holding.quantity > 0 and _soon(knowledge, holding)):
                    raised += _expiring(repo, knowledge, location, holding)
    return raised


def _soon(knowledge: Knowledge, holding: Holding) -> bool:
    end = parse_time(holding.expires, end=True)
    return end is None or end < now() + timedelta(days=knowledge.rules.expiry_alert_days)


def _low_stock(repo: Repository, knowledge: Knowledge, location: str, product: tuple[str, str],
               stock: list[Holding]) -> int:
    level = knowledge.rules.reorder_level(*product)
    available = sum(h.quantity for h in stock if not h.expired())
    label = _label(stock, product)
    text = (f"Low stock: {label} at Location/{location}: {number(available)} unexpired left "
            f"(reorder level {number(level)})")
    return _flag(repo, f"low-stock {product_key(location, product)}", available < level, "low-stock", text,
                 f"Location/{location}", location)


def _expiring(repo: Repository, knowledge: Knowledge, location: str, holding: Holding) -> int:
    soon = _soon(knowledge, holding)
    lot = ((holding.batch.content or {}).get("batch") or {}).get("lotNumber")
    word = "expired" if holding.expired() else "expires"
    text = (f"Expiring stock: lot {lot} of {_label([holding], ('', '?'))} {word} {holding.expires}; "
            f"{number(holding.quantity)} at Location/{location}")
    return _flag(repo, f"expiring Location/{location}/Medication/{holding.batch.id}", soon and holding.quantity > 0,
                 "expiring-stock", text, f"Medication/{holding.batch.id}", location)


def _label(stock: list[Holding], product: tuple[str, str]) -> str:
    for holding in stock:
        code = (holding.batch.content or {}).get("code") or {}
        text = code.get("text") or next((c.get("display") for c in code.get("coding") or [] if c.get("display")), None)
        if text:
            return str(text)
    return product[1]


def _flag(repo: Repository, key: str, wanted: bool, code: str, text: str, subject: str, location: str) -> int:
    ids = repo.find_ids("Flag", [("identifier", f"{ALERT_KEY}|{key}")], limit=10)
    active = [v for v in repo.read_many([("Flag", i) for i in ids]) if (v.content or {}).get("status") == "active"]
    if wanted and not active:
        flag = repo.create("Flag", {
            "resourceType": "Flag", "identifier": [{"system": ALERT_KEY, "value": key}], "status": "active",
            "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "admin", "display": "Administrative"}]}],
            "code": {"coding": [{"system": PHARMACY, "code": code}], "text": text},
            "subject": {"reference": subject}, "period": {"start": stamp(now())}})
        _communication(repo, flag.reference, text, location)
        return 1
    if not wanted:
        for version in active:
            content = dict(version.content or {})
            content["status"] = "inactive"
            content["period"] = {**(content.get("period") or {}), "end": stamp(now())}
            repo.update("Flag", version.id, content)
    return 0


def _communication(repo: Repository, flag: str, text: str, location: str) -> None:
    communication: dict[str, Any] = {
        "resourceType": "Communication", "status": "preparation",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                  "code": "alert"}]}],
        "priority": "urgent" if text.startswith("Low stock") else "routine",
        # R4 has no search parameter on Communication.about: the identifier finds a Flag's messages
        "identifier": [{"system": ALERT_FLAG, "value": flag}],
        "about": [{"reference": flag}], "payload": [{"contentString": text}]}
    places = repo.read_many([("Location", location)])
    organization = ref_id((places[0].content or {}).get("managingOrganization") if places else None, "Organization")
    if organization:
        communication["recipient"] = [{"reference": f"Organization/{organization}"}]
    repo.create("Communication", communication)


# --- $pharmacy-stock-check -------------------------------------------------------------------------------------

def stock_check_operation(knowledge: Knowledge) -> Operation:
    def handler(req: FhirRequest, repo: Repository, _rtype: str | None, _rid: str | None) -> FhirResponse:
        access = repo.access
        if not (is_local(access) or role_of(access) in ("pharmacist", "admin") or access.administers()):
            raise rule_violation(403, "stock-check-role", "$pharmacy-stock-check is for pharmacists and "
                                 "administrators", ("$pharmacy-stock-check",), code="forbidden")
        raised = checked = 0
        with repo.acting_as(as_system(ALERT_REASON)):
            by_store: dict[str, set[tuple[str, str]]] = {}
            after: str | None = None
            while True:  # every stock record, in id order, a page at a time
                ids = repo.find_ids("Basic", [("code", f"{PHARMACY}|medication-stock")], limit=500, after=after)
                if not ids:
                    break
                after = ids[-1]
                for record in repo.read_many([("Basic", i) for i in ids]):
                    content = record.content or {}
                    store = ref_id((extension(content, EXT_LOCATION) or {}).get("valueReference"), "Location")
                    product = next((i.get("value") for i in content.get("identifier") or []
                                    if i.get("system") == STOCK_PRODUCT), None)
                    if store and isinstance(product, str) and len(product.split(" ")) == 3:
                        _, system, code = product.split(" ")
                        by_store.setdefault(store, set()).add((system, code))
            for store in sorted(by_store):
                checked += len(by_store[store])
                raised += review(repo, knowledge, store, sorted(by_store[store]))
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": [
            {"name": "checked", "valueInteger": checked}, {"name": "raised", "valueInteger": raised}]})

    return Operation("pharmacy-stock-check", handler, "https://fhir-server.dev/OperationDefinition/pharmacy-stock-check",
                     system=True, affects_state=True)
