"""Stock as FHIR (issue 18 item 2): batches, stock per store, receipts, dispenses first-expiry-first-out.

- A batch is a Medication with ``code`` (the product) and ``batch.lotNumber`` / ``batch.expirationDate``.
- What a store holds of a batch is a Basic "medication-stock" record (STOCK_PROFILE): subject the batch, the
  store Location and the quantity in extensions, identifiers ``Location/L/Medication/B`` (one per batch and
  store) and ``Location/L <system> <code>`` (the store's product, what a dispense looks up).
- Stock comes in by SupplyDelivery (status completed: suppliedItem.itemReference the batch, quantity,
  destination the store) and goes out by MedicationDispense (status completed: quantity, location the store,
  authorizingPrescription). Every change writes a Basic "stock-movement" (signed quantity, balance after, the
  cause) and a new version of the stock record, in the dispense's or delivery's own transaction, each with the
  AuditEvent every write gets. Only these rules write stock records and movements.
- Concurrency: a movement at a store first takes that store's lock (``Repository.lock``: an advisory
  transaction lock on PostgreSQL, the database lock on SQLite), so of two dispenses of the last units exactly
  one finds them; a dispense also locks its prescription, so repeated dispenses never exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import SystemAccess, as_system
from fhir_server.storage.repository import Repository, Version
from fhir_server.workflows.pharmacy.common import (
    EXT_BALANCE,
    EXT_CAUSE,
    EXT_LOCATION,
    EXT_QUANTITY,
    MOVEMENT_CAUSE,
    MOVEMENT_PROFILE,
    PHARMACY,
    STOCK_KEY,
    STOCK_PRODUCT,
    STOCK_PROFILE,
    STOCK_REASON,
    codings,
    extension,
    now,
    number,
    parse_time,
    practitioner_of,
    quantity_value,
    ref_id,
)
from fhir_server.workflows.rules import rule_violation

MD = "MedicationDispense"
SD = "SupplyDelivery"
LEDGER_CODES = ("medication-stock", "stock-movement")


@dataclass
class Holding:
    """One batch at one store: its stock record and the batch Medication."""
    record: Version
    batch: Version

    @property
    def quantity(self) -> float:
        return quantity_value((extension(self.record.content or {}, EXT_QUANTITY) or {}).get("valueQuantity")) or 0.0

    @property
    def expires(self) -> str:
        return str(((self.batch.content or {}).get("batch") or {}).get("expirationDate") or "")

    def expired(self) -> bool:
        end = parse_time(self.expires, end=True)
        return end is None or end < now()


def product_of(batch: dict[str, Any]) -> tuple[str, str] | None:
    found = codings(batch.get("code"))
    return found[0] if found else None


def product_key(location: str, product: tuple[str, str]) -> str:
    return f"Location/{location} {product[0]} {product[1]}"


def lock_store(repo: Repository, location: str) -> None:
    repo.lock(f"pharmacy-stock Location/{location}")


def holdings(repo: Repository, location: str, products: list[tuple[str, str]]) -> list[Holding]:
    """The store's stock records of these products with their batches (read as the ledger, not the caller)."""
    if not products:
        return []
    wanted = ",".join(f"{STOCK_PRODUCT}|{product_key(location, p)}" for p in products)
    records = repo.read_many([("Basic", i) for i in repo.find_ids("Basic", [("identifier", wanted)], limit=1000)])
    batches = {v.id: v for v in repo.read_many([("Medication", ref_id((r.content or {}).get("subject"), "Medication")
                                                  or "") for r in records])}
    out = [Holding(r, batches[b]) for r in records
           if (b := ref_id((r.content or {}).get("subject"), "Medication")) in batches]
    return sorted(out, key=lambda h: (parse_time(h.expires, end=True) or now(), h.batch.id))


# --- the ledger's own records -------------------------------------------------------------------------------

def guard_ledger(event: WriteEvent, repo: Repository | None) -> None:
    """Stock records and movements change only through receipts and dispenses (this module, as STOCK_REASON)."""
    if event.resource_type != "Basic" or repo is None:
        return
    contents = [event.resource, event.previous.content if event.previous else None]
    if not any(c and any(s == PHARMACY and code in LEDGER_CODES for s, code in codings(c.get("code")))
               for c in contents):
        return
    access = repo.access
    if not (isinstance(access, SystemAccess) and access.reason == STOCK_REASON):
        raise rule_violation(403, "stock-ledger-read-only", "Stock records and movements are written by the "
                             "server from SupplyDeliveries and MedicationDispenses", ("Basic",), code="forbidden")


def move(repo: Repository, location: str, batch: Version, delta: float, cause: str, unit: str | None,
         author: str | None, holding: Holding | None = None) -> float:
    """Add ``delta`` (negative: out) to a batch's stock at a store; write the record and a movement. Runs under
    the store's lock, as the ledger. Returns the new balance."""
    with repo.acting_as(as_system(STOCK_REASON)):
        return _move(repo, location, batch, delta, cause, unit, author, holding)


def _move(repo: Repository, location: str, batch: Version, delta: float, cause: str, unit: str | None,
          author: str | None, holding: Holding | None) -> float:
    key = f"Location/{location}/Medication/{batch.id}"
    record = holding.record if holding else None
    if record is None:
        ids = repo.find_ids("Basic", [("identifier", f"{STOCK_KEY}|{key}")], limit=1)
        record = repo.read_many([("Basic", ids[0])])[0] if ids else None
    old = Holding(record, batch).quantity if record else 0.0
    balance = old + delta
    if balance < -1e-9:
        raise rule_violation(409, "insufficient-stock", f"Only {number(old)} of lot "
                             f"{(batch.content or {}).get('batch', {}).get('lotNumber')} left at Location/{location}",
                             (f"{MD}.quantity",))
    product = product_of(batch.content or {}) or ("", "")
    stock_unit = unit or _unit(record)
    quantity: dict[str, Any] = {"value": number(balance)}
    if stock_unit:
        quantity["unit"] = stock_unit
    content = {"resourceType": "Basic", "meta": {"profile": [STOCK_PROFILE]},
               "identifier": [{"system": STOCK_KEY, "value": key},
                              {"system": STOCK_PRODUCT, "value": product_key(location, product)}],
               "code": {"coding": [{"system": PHARMACY, "code": "medication-stock",
                                    "display": "Medication stock held at a store"}]},
               "subject": {"reference": f"Medication/{batch.id}"},
               "created": (record.content or {}).get("created", _today()) if record else _today(),
               "extension": [{"url": EXT_LOCATION, "valueReference": {"reference": f"Location/{location}"}},
                             {"url": EXT_QUANTITY, "valueQuantity": quantity}]}
    if record is None:
        repo.create("Basic", content)
    else:
        repo.update("Basic", record.id, content)
    movement: dict[str, Any] = {
        "resourceType": "Basic", "meta": {"profile": [MOVEMENT_PROFILE]},
        "identifier": [{"system": MOVEMENT_CAUSE, "value": cause}],
        "code": {"coding": [{"system": PHARMACY, "code": "stock-movement", "display": "Stock movement"}]},
        "subject": {"reference": f"Medication/{batch.id}"}, "created": _today(),
        "extension": [{"url": EXT_LOCATION, "valueReference": {"reference": f"Location/{location}"}},
                      {"url": EXT_QUANTITY, "valueQuantity": {**quantity, "value": number(delta)}},
                      {"url": EXT_BALANCE, "valueQuantity": quantity},
                      {"url": EXT_CAUSE, "valueReference": {"reference": cause}}]}
    if author:
        movement["author"] = {"reference": author}
    repo.create("Basic", movement)
    return balance


def _today() -> str:
    return now().date().isoformat()  # Basic.created is a date


def _unit(record: Version | None) -> str | None:
    if record is None:
        return None
    q = (extension(record.content or {}, EXT_QUANTITY) or {}).get("valueQuantity") or {}
    return q.get("unit") if isinstance(q.get("unit"), str) else None


# --- receipts: SupplyDelivery ---------------------------------------------------------------------------------

def receive(event: WriteEvent, repo: Repository | None) -> tuple[str, tuple[str, str], str] | None:
    """BEFORE_COMMIT of a SupplyDelivery that becomes completed: the batch enters the store's stock.
    Returns (store, product, batch) for the alerts."""
    if event.resource_type != SD or repo is None or event.resource is None or event.version is None:
        return None
    resource, previous = event.resource, event.previous.content if event.previous else None
    if resource.get("status") != "completed" or (previous or {}).get("status") == "completed":
        if previous and previous.get("status") == "completed" and previous.get("suppliedItem") != resource.get(
                "suppliedItem"):
            raise rule_violation(409, "receipt-completed", "A completed delivery's items are in stock: record a new "
                                 "delivery instead of changing this one", (f"{SD}.suppliedItem",))
        return None
    item = resource.get("suppliedItem") or {}
    batch_id = ref_id(item.get("itemReference"), "Medication")
    if batch_id is None:
        raise rule_violation(422, "receipt-batch", "A delivery into stock names the batch (a Medication with "
                             "batch.lotNumber and batch.expirationDate)", (f"{SD}.suppliedItem.itemReference",))
    amount = quantity_value(item.get("quantity"))
    if amount is None or amount <= 0:
        raise rule_violation(422, "receipt-quantity", "A delivery into stock has a positive quantity",
                             (f"{SD}.suppliedItem.quantity",))
    location = ref_id(resource.get("destination"), "Location")
    if location is None:
        raise rule_violation(422, "receipt-destination", "A delivery into stock names the store (a Location)",
                             (f"{SD}.destination",))
    with repo.acting_as(as_system(STOCK_REASON)):
        batches = repo.read_many([("Medication", batch_id)])
    batch = batches[0] if batches else None
    details = ((batch.content or {}).get("batch") or {}) if batch else {}
    if batch is None or not details.get("lotNumber") or not details.get("expirationDate") \
            or product_of(batch.content or {}) is None:
        raise rule_violation(422, "receipt-batch", "The delivered Medication is a batch: code, batch.lotNumber "
                             "and batch.expirationDate", (f"{SD}.suppliedItem.itemReference",))
    end = parse_time(details["expirationDate"], end=True)
    if end is None or end < now():
        raise rule_violation(422, "batch-expired", f"Lot {details['lotNumber']} expired on "
                             f"{details['expirationDate']}: not taken into stock",
                             (f"{SD}.suppliedItem.itemReference",))
    lock_store(repo, location)
    unit = (item.get("quantity") or {}).get("unit")
    move(repo, location, batch, amount, event.version.reference, unit if isinstance(unit, str) else None,
         practitioner_of(repo.access))
    return location, product_of(batch.content or {}) or ("", ""), batch.id
