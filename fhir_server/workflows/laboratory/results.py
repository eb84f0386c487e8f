"""An order's results follow its state (issue 18, item 3), whether they come over REST or HL7 v2.

- No result (an Observation or DiagnosticReport ``basedOn`` the ServiceRequest, with a value: status
  preliminary, final, amended or corrected) before a specimen of the order is collected; orders whose
  category says they take no specimen (imaging, procedures: ``no-specimen-orders.json``, data) are exempt.
- A revoked (or entered-in-error) order takes no results.
- A final laboratory result (basedOn an order, or of category laboratory) is not changed again except by
  a correction: the new version's status is ``corrected`` or ``amended`` (or ``entered-in-error``, its
  retraction); it is never deleted. Re-sending the same content (an analyser's retry) is no change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.hooks import WriteEvent
from fhir_server.workflows.laboratory.specimens import order_has_collected_specimen
from fhir_server.workflows.refs import ref_id
from fhir_server.workflows.rules import rule_violation

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

RESULT_TYPES = ("Observation", "DiagnosticReport")
WITH_VALUE = {"preliminary", "final", "amended", "corrected", "partial"}
FINAL = {"final", "amended", "corrected"}
CORRECTIONS = {"amended", "corrected", "entered-in-error"}
CANCELLED_ORDER = {"revoked", "entered-in-error"}

ORDER_CANCELLED = "lab-order-cancelled"
NOT_COLLECTED = "lab-specimen-not-collected"
RESULT_FINAL = "lab-result-final"


NO_SPECIMEN = Path(__file__).with_name("no-specimen-orders.json")


def load_no_specimen(path: Path = NO_SPECIMEN) -> frozenset[tuple[str, str]]:
    """(system, code) of the ServiceRequest categories whose orders take no specimen."""
    return frozenset((c["system"], c["code"]) for c in json.loads(path.read_text())["categories"])


def takes_specimen(order: dict[str, Any], exempt: frozenset[tuple[str, str]]) -> bool:
    return not any((c.get("system"), c.get("code")) in exempt
                   for concept in order.get("category") or [] for c in concept.get("coding") or [])


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    strip = ("meta", "text")
    return {k: v for k, v in (a or {}).items() if k not in strip} == {k: v for k, v in (b or {}).items()
                                                                      if k not in strip}


LAB_CATEGORIES = {("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"),
                  ("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB")}


def lab_result(resource: dict[str, Any]) -> bool:
    """A laboratory result: ``basedOn`` an order, or of category laboratory (a vital sign is not)."""
    if any(ref_id(ref, "ServiceRequest") for ref in resource.get("basedOn") or []):
        return True
    return any((c.get("system"), c.get("code")) in LAB_CATEGORIES
               for concept in resource.get("category") or [] for c in concept.get("coding") or [])


def check_final(event: WriteEvent, repo: Repository) -> None:
    """Final laboratory results change only by a correction, and are never deleted."""
    previous = event.previous.content if event.previous is not None and not event.previous.deleted else None
    if not previous or previous.get("status") not in FINAL or not lab_result(previous):
        return
    rtype = event.resource_type
    if event.interaction == "delete":
        raise rule_violation(409, RESULT_FINAL, f"{rtype}/{event.resource_id} is a {previous['status']} result: "
                                                f"it is corrected (status corrected/amended) or retracted "
                                                f"(entered-in-error), never deleted", (f"{rtype}.status",))
    new = event.resource or {}
    if new.get("status") not in CORRECTIONS and not _same(new, previous):
        raise rule_violation(409, RESULT_FINAL, f"{rtype}/{event.resource_id} is a {previous['status']} result: "
                                                f"a change must be a corrected version (status corrected or "
                                                f"amended), not status {new.get('status')!r}", (f"{rtype}.status",))


def check_order_state(event: WriteEvent, repo: Repository, exempt: frozenset[tuple[str, str]]) -> None:
    """The orders a result is basedOn are not cancelled and have a collected specimen."""
    result = event.resource or {}
    status = result.get("status")
    if status == "entered-in-error":
        return  # retracting a result is always allowed
    rtype = event.resource_type
    for i, ref in enumerate(result.get("basedOn") or []):
        order_id = ref_id(ref, "ServiceRequest")
        if order_id is None:
            continue
        current = repo.current("ServiceRequest", order_id)
        if current is None or current.deleted or current.content is None:
            continue  # referential integrity (when on) answers for a dangling reference
        order = current.content
        if order.get("status") in CANCELLED_ORDER:
            raise rule_violation(409, ORDER_CANCELLED, f"ServiceRequest/{order_id} is {order['status']}: "
                                                       f"a cancelled order takes no results",
                                 (f"{rtype}.basedOn[{i}]",))
        if status in WITH_VALUE and takes_specimen(order, exempt) and not order_has_collected_specimen(repo, order):
            raise rule_violation(409, NOT_COLLECTED, f"ServiceRequest/{order_id} has no collected Specimen yet "
                                                     f"(ServiceRequest.specimen, or Specimen.request naming "
                                                     f"the order, with collection.collectedDateTime): no "
                                                     f"results before it",
                                 (f"{rtype}.basedOn[{i}]",))
