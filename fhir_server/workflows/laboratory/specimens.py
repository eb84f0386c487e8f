"""A specimen's barcode is unique per identifier system: a second Specimen with the same label is a 409.

Enforced by the database: the writer takes a transaction lock on the barcode (``Repository.lock``: an
advisory lock on PostgreSQL, the write lock SQLite already holds) before it looks for another Specimen
with it, so of two concurrent writes of one barcode the second sees the first once it commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.workflows.laboratory.refs import ref_id, token
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


def collected(specimen: dict[str, object] | None) -> bool:
    """Whether a Specimen has been taken from the patient (collection.collected[x]) and is usable."""
    if not specimen or specimen.get("status") in SPECIMEN_UNAVAILABLE:
        return False
    collection = specimen.get("collection")
    return isinstance(collection, dict) and bool(collection.get("collectedDateTime") or
                                                 collection.get("collectedPeriod"))


def order_has_collected_specimen(repo: Repository, order: dict[str, object], order_id: str) -> bool:
    """The order's specimens: those it names (ServiceRequest.specimen) and those naming it (Specimen.request)."""
    named = [sid for ref in order.get("specimen") or [] if (sid := ref_id(ref, "Specimen"))]  # type: ignore[attr-defined]
    with repo.acting_as(as_system("laboratory: an order's specimens, whoever may see them")):
        named += repo.find_ids("Specimen", [("request", f"ServiceRequest/{order_id}")], limit=50)
    for sid in dict.fromkeys(named):
        current = repo.current("Specimen", sid)
        if current is not None and not current.deleted and collected(current.content):
            return True
    return False
