"""Vital signs: plausibility after UCUM conversion, ``interpretation`` from reference ranges, conformance to
the FHIR R4 vital-signs profiles (data/vitals.json says which code is which sign, its profile and limits).

BEFORE_VALIDATE (the content may still change): the sign is recognised by its LOINC code, its profile added
to ``meta.profile``, each value converted to the unit its limits are written in, an implausible value
refused 422 naming the element, and ``interpretation`` (N/L/H/LL/HH, v3-ObservationInterpretation) set when
the writer gave none. BEFORE_COMMIT: the validation package checks the profile (its issues are returned).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.errors import FhirError
from fhir_server.search.ucum import SYSTEM as UCUM
from fhir_server.search.ucum import convert
from fhir_server.validation.service import validate_profiles
from fhir_server.workflows.rules import rule_issue, rule_violation

if TYPE_CHECKING:
    from fhir_server.hooks import WriteEvent
    from fhir_server.storage.repository import Repository

LOINC = "http://loinc.org"
WRITES = ("create", "update", "patch")


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """data/vitals.json: read-only reference data (the same for every tenant)."""
    return dict(json.loads((Path(__file__).parent / "data" / "vitals.json").read_text()))


@dataclass(frozen=True)
class Reading:
    """One value to check: the sign (or BP component) definition, the Quantity, and where it sits."""
    spec: dict[str, Any]
    holder: dict[str, Any]  # the Observation or its component: has valueQuantity, referenceRange, interpretation
    path: str  # Observation or Observation.component[i]


def loinc_codes(concept: Any) -> set[str]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return {c["code"] for c in codings or [] if isinstance(c, dict) and c.get("system") == LOINC
            and isinstance(c.get("code"), str)}


def sign_of(resource: dict[str, Any]) -> dict[str, Any] | None:
    codes = loinc_codes(resource.get("code"))
    for sign in table()["signs"]:
        if codes & set(sign["codes"]):
            return dict(sign)
    return None


def is_vital_category(resource: dict[str, Any]) -> bool:
    cat = table()["category"]
    return any(isinstance(c, dict) and any(isinstance(x, dict) and x.get("system") == cat["system"]
                                           and x.get("code") == cat["code"] for x in c.get("coding") or [])
               for c in resource.get("category") or [])


def profile_of(resource: dict[str, Any]) -> str | None:
    sign = sign_of(resource)
    if sign is not None:
        return str(sign["profile"])
    return str(table()["genericProfile"]) if is_vital_category(resource) else None


def readings(resource: dict[str, Any], sign: dict[str, Any]) -> list[Reading]:
    if not sign.get("components"):
        return [Reading(sign, resource, "Observation")]
    out = []
    for i, comp in enumerate(resource.get("component") or []):
        if not isinstance(comp, dict):
            continue
        codes = loinc_codes(comp.get("code"))
        for spec in sign["components"]:
            if codes & set(spec["codes"]):
                out.append(Reading(spec, comp, f"Observation.component[{i}]"))
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def value_in_unit(reading: Reading) -> float | None:
    """The reading's value in the unit its limits are written in; 422 when its unit cannot be converted."""
    q = reading.holder.get("valueQuantity")
    value = _number(q.get("value")) if isinstance(q, dict) else None
    if value is None or not isinstance(q, dict):
        return None  # no value (dataAbsentReason) or not a number: the structure check's to report
    unit = q.get("code")
    if q.get("system") not in (None, UCUM) or not isinstance(unit, str):
        raise rule_violation(422, "clinic-vital-unit", f"{reading.spec['name']} needs a UCUM unit code "
                             f"(system {UCUM}), convertible to {reading.spec['unit']}",
                             (f"{reading.path}.valueQuantity.code",))
    converted = convert(value, unit, reading.spec["unit"])
    if converted is None:
        raise rule_violation(422, "clinic-vital-unit", f"{reading.spec['name']} in '{unit}' cannot be converted "
                             f"to {reading.spec['unit']}", (f"{reading.path}.valueQuantity.code",))
    return converted


def check_plausible(reading: Reading, value: float) -> None:
    limits = reading.spec.get("plausible") or {}
    low, high = limits.get("low"), limits.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise rule_violation(422, "clinic-vital-implausible",
                             f"{reading.spec['name']} {value:g} {reading.spec['unit']} is not plausible "
                             f"(accepted {low}-{high} {reading.spec['unit']})",
                             (f"{reading.path}.valueQuantity.value",))


def _bound(q: Any, unit: str, fallback: str | None) -> float | None:
    if not isinstance(q, dict) or _number(q.get("value")) is None:
        return None
    return convert(float(q["value"]), str(q.get("code") or fallback or unit), unit)


def interpretation(reading: Reading, value: float) -> str:
    """LL/HH outside the critical range, L/H outside the normal one (the Observation's own referenceRange
    when it gives one, else the defaults), else N."""
    spec = reading.spec
    normal = dict(spec.get("normal") or {})
    unit_given = (reading.holder.get("valueQuantity") or {}).get("code")
    for rr in reading.holder.get("referenceRange") or []:
        if isinstance(rr, dict) and (rr.get("low") or rr.get("high")):
            normal = {"low": _bound(rr.get("low"), spec["unit"], unit_given),
                      "high": _bound(rr.get("high"), spec["unit"], unit_given)}
            break
    critical = spec.get("critical") or {}
    if critical.get("low") is not None and value < critical["low"]:
        return "LL"
    if critical.get("high") is not None and value > critical["high"]:
        return "HH"
    if normal.get("low") is not None and value < normal["low"]:
        return "L"
    if normal.get("high") is not None and value > normal["high"]:
        return "H"
    return "N"


def _interpretation_concept(code: str) -> list[dict[str, Any]]:
    interp = table()["interpretation"]
    return [{"coding": [{"system": interp["system"], "code": code, "display": interp["display"][code]}]}]


def _declare(resource: dict[str, Any], profile: str) -> None:
    meta = resource.setdefault("meta", {})
    if isinstance(meta, dict):
        profiles = meta.setdefault("profile", [])
        if isinstance(profiles, list) and profile not in profiles:
            profiles.append(profile)


def _check_order(sign: dict[str, Any], values: dict[str, tuple[Reading, float]]) -> None:
    for rule in sign.get("greaterThan") or []:
        big, small = values.get(rule["greater"]), values.get(rule["than"])
        if big is not None and small is not None and not big[1] > small[1]:
            raise rule_violation(422, rule["rule"], f"{rule['greater']} ({big[1]:g}) must be above "
                                 f"{rule['than']} ({small[1]:g})",
                                 (f"{big[0].path}.valueQuantity.value", f"{small[0].path}.valueQuantity.value"))


def before_validate(event: WriteEvent, _repo: Repository | None) -> None:
    resource = event.resource
    if event.resource_type != "Observation" or event.interaction not in WRITES or not isinstance(resource, dict):
        return
    profile = profile_of(resource)
    if profile is None:
        return
    _declare(resource, profile)
    sign = sign_of(resource)
    if sign is None or resource.get("status") in table()["skipStatuses"]:
        return
    values: dict[str, tuple[Reading, float]] = {}
    for reading in readings(resource, sign):
        value = value_in_unit(reading)
        if value is None:
            continue
        check_plausible(reading, value)
        values[reading.spec["name"]] = (reading, value)
    _check_order(sign, values)
    for reading, value in values.values():
        if (reading.spec.get("normal") or reading.spec.get("critical")) \
                and not reading.holder.get("interpretation"):
            reading.holder["interpretation"] = _interpretation_concept(interpretation(reading, value))


def before_commit(event: WriteEvent, repo: Repository | None) -> None:
    """The profile check of the validation package; its errors refuse the write with the elements named."""
    resource = event.resource
    if event.resource_type != "Observation" or event.interaction not in WRITES or not isinstance(resource, dict):
        return
    profile = profile_of(resource)
    if profile is None:
        return
    errors = [i for i in validate_profiles(repo, resource, [profile]) if i.severity in ("error", "fatal")]
    if errors:
        head = rule_issue("clinic-vital-profile", f"a vital sign must conform to {profile}: "
                          + "; ".join(i.diagnostics for i in errors[:3]),
                          errors[0].expression)
        raise FhirError(422, [head, *errors])
