"""MedicationDispense takes stock first-expiry-first-out (issue 18 item 2).

BEFORE_VALIDATE of a dispense becoming ``completed``: the prescription must be active, within its validity
period, for the same patient and not yet fully dispensed (partial dispenses add up to at most the prescribed
quantity times 1 + repeats); then, under the store's lock, batches are chosen by earliest expiry, expired
ones never, a named batch (medicationReference to a batch Medication) only; the choice is written on the
dispense (DISPENSED_BATCH extensions, set by the server alone). BEFORE_COMMIT takes those quantities out of
the stock records, one movement each, and completes the prescription once all of it is dispensed. A completed
dispense is final, except ``entered-in-error``, which puts its quantities back.
"""

from __future__ import annotations

from typing import Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository, Version
from fhir_server.workflows.pharmacy.common import (
    DISPENSED_BATCH,
    STOCK_REASON,
    codings,
    now,
    number,
    parse_time,
    practitioner_of,
    quantity_value,
    ref_id,
)
from fhir_server.workflows.pharmacy.stock import MD, holdings, lock_store, move, product_of
from fhir_server.workflows.rules import rule_violation

MR = "MedicationRequest"


def _allocations(resource: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [e for e in (resource or {}).get("extension") or []
            if isinstance(e, dict) and e.get("url") == DISPENSED_BATCH]


def _allocation_parts(ext: dict[str, Any]) -> tuple[str | None, float]:
    parts = {p.get("url"): p for p in ext.get("extension") or [] if isinstance(p, dict)}
    batch = ref_id((parts.get("batch") or {}).get("valueReference"), "Medication")
    amount = (parts.get("quantity") or {}).get("valueDecimal")
    return batch, float(amount) if isinstance(amount, int | float) else 0.0


def before_validate(event: WriteEvent, repo: Repository | None) -> None:
    if event.resource_type != MD or repo is None:
        return
    previous = event.previous.content if event.previous and not event.previous.deleted else None
    was_completed = (previous or {}).get("status") == "completed"
    if event.resource is None:  # delete
        if was_completed:
            raise rule_violation(409, "dispense-completed", "A completed dispense is kept; mark it entered-in-error "
                                 "to put its stock back", (MD,))
        return
    resource = event.resource
    others = [e for e in resource.get("extension") or []
              if not (isinstance(e, dict) and e.get("url") == DISPENSED_BATCH)]
    if was_completed:  # the batches taken are the server's record: kept as they were
        kept = _allocations(previous)
        if resource.get("status") not in ("completed", "entered-in-error"):
            raise rule_violation(409, "dispense-completed", "A completed dispense can only be marked "
                                 "entered-in-error (which returns its stock)", (f"{MD}.status",))
        for key in ("quantity", "location", "medicationCodeableConcept", "medicationReference"):
            if resource.get(key) != previous.get(key):  # type: ignore[union-attr]
                raise rule_violation(409, "dispense-completed", f"A completed dispense's {key} is final",
                                     (f"{MD}.{key}",))
        _set_extensions(resource, others + kept)
        return
    if (previous or {}).get("status") == "entered-in-error" and _allocations(previous):
        if resource.get("status") != "entered-in-error":  # its stock went back: a new dispense, not this one
            raise rule_violation(409, "dispense-completed", "A dispense taken back (entered-in-error) stays so; "
                                 "record a new dispense", (f"{MD}.status",))
        _set_extensions(resource, others + _allocations(previous))  # what it had taken, for the record
        return
    _set_extensions(resource, others)  # a client never writes which batches the server took
    if resource.get("status") == "completed":
        _allocate(event, repo, resource)


def _set_extensions(resource: dict[str, Any], extensions: list[Any]) -> None:
    if extensions:
        resource["extension"] = extensions
    else:
        resource.pop("extension", None)


def _allocate(event: WriteEvent, repo: Repository, resource: dict[str, Any]) -> None:
    amount = quantity_value(resource.get("quantity"))
    if amount is None or amount <= 0:
        raise rule_violation(422, "dispense-quantity", "A completed dispense states the quantity given (> 0)",
                             (f"{MD}.quantity",))
    location = ref_id(resource.get("location"), "Location")
    if location is None:
        raise rule_violation(422, "dispense-location", "A completed dispense names the store it was dispensed "
                             "from (location)", (f"{MD}.location",))
    prescriptions = resource.get("authorizingPrescription") or []
    prescription = ref_id(prescriptions[0], MR) if isinstance(prescriptions, list) and prescriptions else None
    if prescription is None:
        raise rule_violation(422, "dispense-prescription", "A dispense is made against a prescription "
                             "(authorizingPrescription)", (f"{MD}.authorizingPrescription",))
    with repo.acting_as(as_system(STOCK_REASON)):
        repo.lock(f"pharmacy-prescription {MR}/{prescription}")  # repeated dispenses add up under this lock
        _check_prescription(repo, resource, prescription, event.resource_id, amount)
        products, batch_only = _product(repo, resource)
        lock_store(repo, location)  # always after the prescription's lock: one order, no deadlock
        stock = holdings(repo, location, products)
    if batch_only is not None:
        stock = [h for h in stock if h.batch.id == batch_only]
        if stock and stock[0].expired():
            raise rule_violation(409, "batch-expired", f"Lot {_lot(stock[0].batch)} expired on {stock[0].expires}: "
                                 "it is never dispensed", (f"{MD}.medicationReference",))
    usable = [h for h in stock if not h.expired() and h.quantity > 0]
    available = sum(h.quantity for h in usable)
    if available + 1e-9 < amount:
        raise rule_violation(409, "insufficient-stock", f"{number(available)} in stock at Location/{location} "
                             f"(unexpired), {number(amount)} asked: dispense what is there (a partial dispense) "
                             "and the rest later", (f"{MD}.quantity",))
    left = amount
    taken: list[dict[str, Any]] = []
    for holding in usable:  # earliest expiry first
        take = min(left, holding.quantity)
        if take <= 0:
            break
        taken.append({"url": DISPENSED_BATCH, "extension": [
            {"url": "batch", "valueReference": {"reference": f"Medication/{holding.batch.id}"}},
            {"url": "lotNumber", "valueString": _lot(holding.batch)},
            {"url": "expirationDate", "valueDateTime": holding.expires},
            {"url": "quantity", "valueDecimal": number(take)}]})
        left -= take
    _set_extensions(resource, list(resource.get("extension") or []) + taken)


def _lot(batch: Version) -> str:
    return str(((batch.content or {}).get("batch") or {}).get("lotNumber") or "?")


def _check_prescription(repo: Repository, resource: dict[str, Any], prescription: str, own_id: str | None,
                        amount: float) -> None:
    found = repo.read_many([(MR, prescription)])
    request = found[0].content or {} if found else None
    where = (f"{MD}.authorizingPrescription[0]",)
    if request is None:
        raise rule_violation(422, "dispense-prescription", f"{MR}/{prescription} is not known", where)
    if request.get("status") != "active":
        raise rule_violation(409, "prescription-not-active", f"{MR}/{prescription} is {request.get('status')}, "
                             "not active", where)
    dispense_request = request.get("dispenseRequest") or {}
    end = parse_time((dispense_request.get("validityPeriod") or {}).get("end"), end=True)
    if end is not None and end < now():
        raise rule_violation(409, "prescription-expired", f"{MR}/{prescription} was valid until "
                             f"{dispense_request['validityPeriod']['end']}", where)
    if "subject" not in resource and request.get("subject"):
        resource["subject"] = request["subject"]  # the prescription's patient
    subject = ref_id(resource.get("subject"), "Patient")
    if subject is not None and subject != ref_id(request.get("subject"), "Patient"):
        raise rule_violation(422, "dispense-subject", "The dispense is for another patient than its prescription",
                             (f"{MD}.subject",))
    prescribed = quantity_value(dispense_request.get("quantity"))
    if prescribed is None:
        return
    repeats = dispense_request.get("numberOfRepeatsAllowed")
    allowed = prescribed * (1 + (repeats if isinstance(repeats, int) else 0))
    done = repo.read_many([(MD, i) for i in repo.find_ids(
        MD, [("prescription", f"{MR}/{prescription}"), ("status", "completed")], limit=1000) if i != own_id])
    given = sum(quantity_value((d.content or {}).get("quantity")) or 0.0 for d in done)
    if given + amount > allowed + 1e-9:
        raise rule_violation(409, "dispense-exceeds-prescription", f"{number(given)} of {number(allowed)} already "
                             f"dispensed on {MR}/{prescription}; {number(amount)} more is too much",
                             (f"{MD}.quantity",))


def _product(repo: Repository, resource: dict[str, Any]) -> tuple[list[tuple[str, str]], str | None]:
    """The product's codings, and the batch when the dispense names one (medicationReference to a batch)."""
    medication = ref_id(resource.get("medicationReference"), "Medication")
    if medication is not None:
        found = repo.read_many([("Medication", medication)])
        content = found[0].content or {} if found else {}
        product = product_of(content)
        if product is None:
            raise rule_violation(422, "dispense-medication", f"Medication/{medication} has no code",
                                 (f"{MD}.medicationReference",))
        batch = medication if (content.get("batch") or {}).get("lotNumber") else None
        return codings(content.get("code")), batch
    products = codings(resource.get("medicationCodeableConcept"))
    if not products:
        raise rule_violation(422, "dispense-medication", "A dispense names its product by a code",
                             (f"{MD}.medicationCodeableConcept",))
    return products, None


def before_commit(event: WriteEvent,
                  repo: Repository | None) -> tuple[str, list[tuple[str, str]], set[str]] | None:
    """Take (or for entered-in-error, put back) the chosen quantities. Returns (store, products, batches) for
    the alerts."""
    if event.resource_type != MD or repo is None or event.resource is None or event.version is None:
        return None
    resource = event.resource
    previous = event.previous.content if event.previous and not event.previous.deleted else None
    was_completed = (previous or {}).get("status") == "completed"
    if resource.get("status") == "completed" and not was_completed:
        sign = -1.0
    elif resource.get("status") == "entered-in-error" and was_completed:
        sign = 1.0
    else:
        return None
    location = ref_id(resource.get("location"), "Location")
    if location is None:
        return None
    unit = (resource.get("quantity") or {}).get("unit")
    products: list[tuple[str, str]] = []
    moved: set[str] = set()
    author = practitioner_of_caller(event, repo)  # before acting as the ledger
    with repo.acting_as(as_system(STOCK_REASON)):
        lock_store(repo, location)
        taken = [_allocation_parts(ext) for ext in _allocations(resource)]
        batches = {v.id: v for v in repo.read_many([("Medication", b) for b, _ in taken if b])}
        products = list(dict.fromkeys(p for v in batches.values() if (p := product_of(v.content or {}))))
        stock = {h.batch.id: h for h in holdings(repo, location, products)}  # one lookup for every batch taken
        for batch_id, amount in taken:
            batch = batches.get(batch_id or "")
            if batch is None:
                continue
            moved.add(batch.id)
            move(repo, location, batch, sign * amount, event.version.reference,
                 unit if isinstance(unit, str) else None, author, stock.get(batch.id))
        if sign < 0:
            _complete_when_all_given(repo, resource)
    return location, products, moved


def _complete_when_all_given(repo: Repository, resource: dict[str, Any]) -> None:
    """A prescription whose quantity (times 1 + repeats) has all been dispensed is completed."""
    prescriptions = resource.get("authorizingPrescription") or []
    prescription = ref_id(prescriptions[0], MR) if prescriptions else None
    found = repo.read_many([(MR, prescription)]) if prescription else []
    request = found[0].content or {} if found else {}
    dispense_request = request.get("dispenseRequest") or {}
    prescribed = quantity_value(dispense_request.get("quantity"))
    if not found or request.get("status") != "active" or prescribed is None:
        return
    repeats = dispense_request.get("numberOfRepeatsAllowed")
    allowed = prescribed * (1 + (repeats if isinstance(repeats, int) else 0))
    done = repo.read_many([(MD, i) for i in repo.find_ids(
        MD, [("prescription", f"{MR}/{prescription}"), ("status", "completed")], limit=1000)])
    if sum(quantity_value((d.content or {}).get("quantity")) or 0.0 for d in done) + 1e-9 >= allowed:
        repo.update(MR, found[0].id, {**request, "status": "completed"})


def practitioner_of_caller(event: WriteEvent, repo: Repository) -> str | None:
    performers = (event.resource or {}).get("performer") or []
    actor = ref_id(performers[0].get("actor") if performers and isinstance(performers[0], dict) else None,
                   "Practitioner")
    return f"Practitioner/{actor}" if actor else practitioner_of(repo.access)
