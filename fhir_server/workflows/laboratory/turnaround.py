"""Turnaround time per order (issue 18, item 4): when the order's first final DiagnosticReport is written,
the ServiceRequest records, in the same transaction, the minutes from ``authoredOn`` (the order) to the
report's ``issued`` (or the moment it was written) as the extension ``TURNAROUND``, and the order, if still
active, becomes ``completed`` (it leaves the ``status=active`` worklist). A later corrected report keeps the
first figure: turnaround is to the first final answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.workflows.laboratory.results import FINAL
from fhir_server.workflows.refs import ref_id

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

TURNAROUND = "https://fhir-server.dev/StructureDefinition/lab-turnaround-time"


def _when(text: Any) -> datetime | None:
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        moment = datetime.fromisoformat(text if len(text) > 10 else text + "T00:00:00+00:00")
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def record_turnaround(event: WriteEvent, repo: Repository) -> None:
    report = event.resource or {}
    if report.get("status") not in FINAL:
        return
    reported = _when(report.get("issued")) or datetime.now(UTC)
    for ref in report.get("basedOn") or []:
        order_id = ref_id(ref, "ServiceRequest")
        current = repo.current("ServiceRequest", order_id) if order_id else None
        if current is None or current.deleted or not current.content:
            continue
        order = dict(current.content)
        if any(e.get("url") == TURNAROUND for e in order.get("extension") or []):
            continue
        authored = _when(order.get("authoredOn")) or current.last_updated
        minutes = round(max((reported - authored).total_seconds(), 0) / 60, 1)
        order["extension"] = [*(order.get("extension") or []), {"url": TURNAROUND, "valueDuration": {
            "value": minutes, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}}]
        if order.get("status") == "active":
            order["status"] = "completed"
        order.pop("meta", None)
        # as system: the lab reports; the order's bookkeeping is the server's (a technician may not edit orders)
        with repo.acting_as(as_system("laboratory: turnaround time and completion recorded on the order")):
            repo.update("ServiceRequest", current.id, order)
