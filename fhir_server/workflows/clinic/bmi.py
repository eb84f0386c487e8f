"""BMI derived and stored: a height or a weight written for a patient on a day when the other is recorded
too makes (or updates) a BMI Observation ``derivedFrom`` both, in the same transaction, with the writer's
access. Writers for one patient and day are serialised (``repo.lock``) so that a height and a weight written
at once still make their BMI: the later one sees the earlier, committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.search.ucum import convert
from fhir_server.workflows.clinic.vitals import LOINC, WRITES, sign_of, table

if TYPE_CHECKING:
    from fhir_server.hooks import WriteEvent
    from fhir_server.storage.repository import Repository


def _day(resource: dict[str, Any]) -> str | None:
    when = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start")
    return when[:10] if isinstance(when, str) and len(when) >= 10 else None


def _when(resource: dict[str, Any]) -> str:
    return str(resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start") or "")


def _in(resource: dict[str, Any], unit: str) -> float | None:
    q = resource.get("valueQuantity")
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float) or not isinstance(q.get("code"), str):
        return None
    return convert(float(q["value"]), q["code"], unit)


def _latest(repo: Repository, subject: str, day: str, codes: list[str]) -> dict[str, Any] | None:
    """The other measurement of that patient and day, the latest taken."""
    ids = repo.find_ids("Observation", [("subject", subject), ("date", f"eq{day}"),
                                        ("code", ",".join(f"{LOINC}|{c}" for c in codes))], limit=100)
    found = [v.content for v in repo.read_many([("Observation", i) for i in ids]) if v.content]
    usable = [r for r in found if r.get("status") in table()["bmi"]["fromStatuses"]]
    return max(usable, key=_when) if usable else None


def on_write(event: WriteEvent, repo: Repository | None) -> None:
    resource = event.resource
    if (repo is None or event.resource_type != "Observation" or event.interaction not in WRITES
            or not isinstance(resource, dict)):
        return
    rule = table()["bmi"]
    sign = sign_of(resource)
    if sign is None or sign["name"] not in rule["from"] or resource.get("status") not in rule["fromStatuses"]:
        return
    subject = (resource.get("subject") or {}).get("reference")
    day = _day(resource)
    if not isinstance(subject, str) or day is None:
        return
    repo.lock(f"clinic-bmi|{subject}|{day}")
    other_name = next(n for n in rule["from"] if n != sign["name"])
    other_sign = next(s for s in table()["signs"] if s["name"] == other_name)
    other = _latest(repo, subject, day, other_sign["codes"])
    if other is None:
        return
    height, weight = (resource, other) if sign["name"] == "body-height" else (other, resource)
    metres, kilos = _in(height, "m"), _in(weight, "kg")
    if not metres or kilos is None:
        return
    bmi = _bmi(rule, subject, height, weight, round(kilos / (metres * metres), rule["decimals"]))
    mine = f"Observation/{resource['id']}"
    existing = repo.find_ids("Observation", [("derived-from", mine), ("code", f"{LOINC}|{rule['code']['code']}")],
                             limit=1)
    if existing:  # a corrected height or weight: its BMI follows
        repo.update("Observation", existing[0], {**bmi, "id": existing[0]})
    else:
        repo.create("Observation", bmi)


def _bmi(rule: dict[str, Any], subject: str, height: dict[str, Any], weight: dict[str, Any],
         value: float) -> dict[str, Any]:
    sign = next(s for s in table()["signs"] if s["name"] == rule["sign"])
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [sign["profile"]]},
        "status": "final",
        "category": [{"coding": [table()["category"]]}],
        "code": {"coding": [rule["code"]], "text": "BMI"},
        "subject": {"reference": subject},
        "effectiveDateTime": max(_when(height), _when(weight)),
        "valueQuantity": {**rule["unit"], "value": value},
        "derivedFrom": [{"reference": f"Observation/{height['id']}"}, {"reference": f"Observation/{weight['id']}"}],
    }
    if height.get("encounter") or weight.get("encounter"):
        out["encounter"] = height.get("encounter") or weight.get("encounter")
    return out
