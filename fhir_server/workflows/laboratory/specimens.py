"""A specimen's barcode is unique per identifier system: a second Specimen with the same label is a 409.

Enforced by the database: the writer takes a transaction lock on the barcode (``Repository.lock``: an
advisory lock on PostgreSQL, the write lock SQLite already holds) before it looks for another Specimen
with it, so of two concurrent writes of one barcode the second sees the first once it commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.workflows.refs import ref_id, token
from fhir_server.workflows.rules import rule_violation

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

DUPLICATE_BARCODE = "lab-specimen-barcode-duplicate"
SPECIMEN_UNAVAILABLE = {"unavailable", "unsatisfactory", "entered-in-error"}


def check_barcodes(event: WriteEvent, repo: Repository) -> None:
    specimen = event.resource or {}
    for i, ident in enumerate(specimen.get("identifier") or []):
        system, value = ident.get("system"), ident.get("value")
        if not system or not value:
            continue  # a label without a system names nothing unique
        repo.lock(f"specimen-barcode|{system}|{value}")
        # as system: a barcode is taken whoever may see the Specimen that holds it
        with repo.acting_as(as_system("laboratory: specimen barcodes are unique across all specimens")):
            ids = repo.find_ids("Specimen", [("identifier", token(system, value))], limit=2)
        if any(other != event.resource_id for other in ids):
            raise rule_violation(409, DUPLICATE_BARCODE,
                                 f"Specimen barcode {system}|{value} is already on another Specimen",
                                 (f"Specimen.identifier[{i}]",))


def collected(specimen: dict[str, Any] | None) -> bool:
    """Whether a Specimen has been taken from the patient (collection.collected[x]) and is usable."""
    if not specimen or specimen.get("status") in SPECIMEN_UNAVAILABLE:
        return False
    collection = specimen.get("collection")
    return isinstance(collection, dict) and bool(collection.get("collectedDateTime") or
                                                 collection.get("collectedPeriod"))


def link_to_orders(event: WriteEvent, repo: Repository) -> None:
    """A Specimen naming its orders (``Specimen.request``) is listed on each (``ServiceRequest.specimen``), in
    the same transaction: R4 has no search parameter on Specimen.request, so the order is where its
    specimens are found."""
    reference = {"reference": f"Specimen/{event.resource_id}"}
    for ref in (event.resource or {}).get("request") or []:
        order_id = ref_id(ref, "ServiceRequest")
        current = repo.current("ServiceRequest", order_id) if order_id else None
        if current is None or current.deleted or not current.content:
            continue
        if any(ref_id(s, "Specimen") == event.resource_id for s in current.content.get("specimen") or []):
            continue
        order = {k: v for k, v in current.content.items() if k != "meta"}
        order["specimen"] = [*(order.get("specimen") or []), reference]
        # as system: a technician labelling a tube may not edit the order; the link is the server's record
        with repo.acting_as(as_system("laboratory: an order lists the specimens drawn for it")):
            repo.update("ServiceRequest", current.id, order)


def order_has_collected_specimen(repo: Repository, order: dict[str, Any]) -> bool:
    """Whether one of the order's specimens (``ServiceRequest.specimen``) has been collected."""
    for ref in order.get("specimen") or []:
        sid = ref_id(ref, "Specimen")
        current = repo.current("Specimen", sid) if sid else None
        if current is not None and not current.deleted and collected(current.content):
            return True
    return False
