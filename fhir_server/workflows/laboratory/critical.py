"""Critical values (issue 18, item 4): a result beyond its critical limits raises, in the same transaction,
a Flag on the patient and a Communication to the ordering practitioner (``ServiceRequest.requester``);
subscriptions on Flag or Communication then fire as for any write.

The limits are data: ObservationDefinition resources (``qualifiedInterval`` with category ``critical``)
keyed by LOINC code. One stored on the server as ``ObservationDefinition/critical-<LOINC code>`` wins (R4 has
no search parameter on ObservationDefinition.code, so the id names the code); otherwise the defaults shipped
in ``critical-values.json`` (the same ids) apply. A value is critical when strictly below ``range.low`` or above
``range.high``, compared only when its UCUM code matches the limit's (no unit conversion: a result in
another unit is not judged rather than judged wrongly). A new version of a result that was already
critical raises nothing again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.hooks import WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import instant
from fhir_server.workflows.laboratory.results import WITH_VALUE
from fhir_server.workflows.refs import codes, ref_id

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

LOINC = "http://loinc.org"
ALERT_SYSTEM = "https://fhir-server.dev/CodeSystem/lab-alert"
FLAG_DETAIL = "http://hl7.org/fhir/StructureDefinition/flag-detail"
DEFAULTS = Path(__file__).with_name("critical-values.json")


@dataclass(frozen=True)
class Critical:
    code: str
    display: str
    value: float
    unit: str
    limit: float
    direction: str  # "low" | "high"

    @property
    def text(self) -> str:
        side = "below" if self.direction == "low" else "above"
        return (f"Critical value: {self.display} {self.value:g} {self.unit} "
                f"(critical {side} {self.limit:g} {self.unit})")


def _critical_range(definition: dict[str, Any]) -> dict[str, Any] | None:
    for interval in definition.get("qualifiedInterval") or []:
        if interval.get("category") == "critical" and isinstance(interval.get("range"), dict):
            return dict(interval["range"])
    return None


def load_defaults(path: Path = DEFAULTS) -> dict[str, dict[str, Any]]:
    """LOINC code -> ObservationDefinition (the shipped critical limits)."""
    bundle = json.loads(path.read_text())
    out: dict[str, dict[str, Any]] = {}
    for entry in bundle.get("entry") or []:
        definition = entry["resource"]
        for code in codes(definition.get("code"), LOINC):
            out[code] = definition
    return out


class CriticalValues:
    def __init__(self, defaults: dict[str, dict[str, Any]]) -> None:
        self.defaults = defaults  # read-only after install: this server's shipped limits

    def range_for(self, repo: Repository, code: str) -> dict[str, Any] | None:
        # R4 has no search parameter on ObservationDefinition.code: a limit is stored under a known id
        stored = repo.current("ObservationDefinition", f"critical-{code}")
        if stored is not None and not stored.deleted and stored.content:
            return _critical_range(stored.content)
        default = self.defaults.get(code)
        return _critical_range(default) if default is not None else None

    def judge(self, repo: Repository, observation: dict[str, Any] | None) -> Critical | None:
        if not observation or observation.get("status") not in WITH_VALUE:
            return None
        quantity = observation.get("valueQuantity")
        if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), (int, float)):
            return None
        value = float(quantity["value"])
        unit = quantity.get("code") or quantity.get("unit")
        for code in codes(observation.get("code"), LOINC):
            limits = self.range_for(repo, code)
            if limits is None:
                continue
            display = (observation.get("code") or {}).get("text") or next(
                (c.get("display") for c in observation["code"]["coding"] if c.get("code") == code), code)
            for direction in ("low", "high"):
                bound = limits.get(direction)
                if not isinstance(bound, dict) or bound.get("value") is None:
                    continue
                if bound.get("code") and unit and bound["code"] != unit:
                    continue  # another unit: not judged (no conversion)
                limit = float(bound["value"])
                if (direction == "low" and value < limit) or (direction == "high" and value > limit):
                    return Critical(code, display, value, str(unit or ""), limit, direction)
        return None

    def after_write(self, event: WriteEvent, repo: Repository) -> None:
        """BEFORE_COMMIT of an Observation: raise the alerts when it has just become critical."""
        critical = self.judge(repo, event.resource)
        if critical is None:
            return
        previous = event.previous.content if event.previous is not None and not event.previous.deleted else None
        if previous is not None and self.judge(repo, previous) is not None:
            return  # already alerted for an earlier version
        raise_alerts(repo, event, critical)


def raise_alerts(repo: Repository, event: WriteEvent, critical: Critical) -> None:
    observation = event.resource or {}
    obs_ref = {"reference": f"Observation/{event.resource_id}"}
    orders = [oid for ref in observation.get("basedOn") or [] if (oid := ref_id(ref, "ServiceRequest"))]
    requesters: list[dict[str, Any]] = []
    for order_id in orders:
        order = repo.current("ServiceRequest", order_id)
        requester = (order.content or {}).get("requester") if order is not None else None
        if isinstance(requester, dict) and requester.get("reference") and requester not in requesters:
            requesters.append({"reference": requester["reference"]})
    now = instant(datetime.now(UTC))
    concept = {"coding": [{"system": ALERT_SYSTEM, "code": f"critical-{critical.direction}",
                           "display": f"Critical {critical.direction} laboratory value"}], "text": critical.text}
    context = {k: observation[k] for k in ("subject", "encounter") if observation.get(k)}
    # as system: the alert is the server's own record, whoever (a lab technician, an analyser) reported
    with repo.acting_as(as_system("laboratory: critical-value Flag and Communication to the orderer")):
        about = [obs_ref]
        if context.get("subject"):
            flag = repo.create("Flag", {
                "resourceType": "Flag", "status": "active",
                "extension": [{"url": FLAG_DETAIL, "valueReference": obs_ref}],
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                          "code": "clinical", "display": "Clinical"}]}],
                "code": concept, "subject": context["subject"], "period": {"start": now},
                **({"encounter": context["encounter"]} if context.get("encounter") else {})})
            about.append({"reference": f"Flag/{flag.id}"})
        if not requesters:
            return  # no ordering practitioner to tell: the Flag stands on the patient's record
        repo.create("Communication", {
            "resourceType": "Communication", "status": "completed",
            "basedOn": [{"reference": f"ServiceRequest/{o}"} for o in orders],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                      "code": "alert", "display": "Alert"}]}],
            "priority": "stat", **context, "about": about, "sent": now, "recipient": requesters,
            "reasonCode": [concept], "payload": [{"contentString": critical.text}]})
