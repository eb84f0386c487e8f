"""Named functions for references to resources a message names rather than describes: practitioners (XCN in
PV1-7/8/9/17, PD1-4, ROL-4, ORC-12, RXE-13...) and the PV1-3 location hierarchy (point of care / room / bed).

Each such resource is planned by a rule naming a ``field`` (one resource per repetition, found by identifier
or created: ``create-if-absent``); the resource that names it then points at that bundle entry, so the
transaction links to the existing Practitioner or Location when there is one, else to the one it creates.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mappings.hl7v2.values import Context, Function, Json, Planned, Value

PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
# Planned Location keys by PL level: 1 = point of care (a ward), 2 = room, 3 = bed.
LEVELS = {"ward": 1, "room": 2, "bed": 3}
LOCATION_BASE = "urn:fhir-server:hl7v2:location:"


def _xcn_identity(value: Value) -> tuple[str, str]:
    return value.part(1), value.part(9)


def _planned_practitioner(value: Value, ctx: Context) -> Planned | None:
    if not value.part(1):
        return None
    wanted = _xcn_identity(value)
    for p in ctx.planned:
        if p.resource_type == "Practitioner" and p.value is not None and _xcn_identity(p.value) == wanted:
            return p
    return None


def practitioner_reference(value: Value, ctx: Context, _node: dict[str, Any]) -> Json:
    """An XCN -> Reference to the Practitioner planned for it (with the name as display), else the XCN as
    identifier + display (a person named without an id is not made a resource)."""
    planned = _planned_practitioner(value, ctx)
    rendered = ctx.engine.render(ctx.engine.partials["XCN"], ctx.with_value(value))
    if planned is None:
        return rendered
    out: dict[str, Any] = {"reference": planned.full_url}
    if rendered and rendered.get("display"):
        out["display"] = rendered["display"]
    return out


def participant(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """An XCN in PV1 -> Encounter.participant with its v3 ParticipationType (PV1-7 ATND, -8 REF, -9 CON,
    -17 ADM, as the v2-to-FHIR IG's PV1[Encounter] sheet)."""
    individual = practitioner_reference(value, ctx, node)
    if not individual:
        return None
    return {"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                  "code": node["code"], "display": node["display"]}]}],
            "individual": individual}


# -- PV1-3 (PL) -> Location hierarchy ------------------------------------------------------------------------
def _location_parts(value: Value, level: int) -> list[str] | None:
    """PL components 1..level when the point of care and the level's own component are given (a bed may
    be named without its room: ``4N^^B``); None when this level is not named."""
    parts = [value.part(i) for i in range(1, level + 1)]
    return parts if parts[0] and parts[-1] else None


def _facility(value: Value, ctx: Context) -> str:
    return value.part(4) or ctx.variables.get("sending_facility") or ctx.variables.get("sender", "")


def _level(value: Value, node: dict[str, Any]) -> int:
    """``level`` of a template node: 1-3, or ``deepest`` (a master file's LOC-1: a bed, a room or a ward)."""
    if node["level"] != "deepest":
        return int(node["level"])
    return next((lvl for lvl in (3, 2, 1) if _location_parts(value, lvl)), 1)


def location_identifier(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """The Location of one level of a PL (``level`` 1-3) as an Identifier: the facility (PL-4, else the
    sending facility) scopes it, the value is the PL components down to that level (``4N^401^B``), so that
    an ADT's PV1-3, an A20's NPU-1 and a master file's LOC-1 name the same Location."""
    parts = _location_parts(value, _level(value, node))
    if parts is None:
        return None
    return {"system": LOCATION_BASE + quote(_facility(value, ctx), safe=""), "value": "^".join(parts)}


def _planned_location(value: Value, ctx: Context, level: int) -> Planned | None:
    wanted = _location_parts(value, level)
    if wanted is None:
        return None
    for p in ctx.planned:
        if p.resource_type != "Location" or p.value is None:
            continue
        # a master file's LOC (key "location") is the level its LOC-1 goes down to
        planned_level = LEVELS.get(p.key) or _level(p.value, {"level": "deepest"})
        if (planned_level == level and _location_parts(p.value, level) == wanted
                and _facility(p.value, ctx) == _facility(value, ctx)):
            return p
    return None


def location_part_of(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """Location.partOf: a bed is part of its room (or its ward, when PL-2 is empty), a room of its ward."""
    for level in range(_level(value, node) - 1, 0, -1):
        planned = _planned_location(value, ctx, level)
        if planned is not None:
            return {"reference": planned.full_url, "display": value.part(level)}
    return None


def location_reference(value: Value, ctx: Context, node: dict[str, Any]) -> Json:
    """A PL -> Reference to its most specific planned Location (bed, else room, else ward), with the whole
    PL as display; only the display when none was planned (no point of care)."""
    display = ctx.engine.render(ctx.engine.partials["PL"], ctx.with_value(value)) or {}
    for level in (3, 2, 1):
        planned = _planned_location(value, ctx, level)
        if planned is not None:
            return {"reference": planned.full_url, **display}
    return display or None


def location_name(value: Value, _ctx: Context, node: dict[str, Any]) -> Json:
    """A readable name of one level: "4N", "4N 401", "4N 401 B"."""
    parts = _location_parts(value, _level(value, node))
    return " ".join(p for p in parts if p) if parts else None


def role_participants(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """Encounter.participant from the ROL segments of the visit (after PV1, before the next PID/PV1), each
    pointing at the PractitionerRole planned for it, as the IG's ROL[Encounter-PractitionerRole] sheet."""
    out = []
    for seg in ctx.msg.segments[ctx.seg.index + 1:]:
        if seg.id in ("PID", "PV1", "MRG"):
            break
        if seg.id != "ROL":
            continue
        role = next((p for p in ctx.planned if p.resource_type == "PractitionerRole" and p.segment is seg), None)
        if role is None:
            continue
        at = ctx.at(seg)
        entry = {"type": [ctx.engine.render({"$": "ROL-3", "as": "CWE"}, at)],
                 "period": ctx.engine.render({"start": {"$": "ROL-5", "as": "dateTime"},
                                              "end": {"$": "ROL-6", "as": "dateTime"}}, at),
                 "individual": {"reference": role.full_url}}
        out.append({k: v for k, v in entry.items() if v and v != [None]})
    return out or None


# ROL-3 (table 0443) roles that make a patient-level ROL the patient's general practitioner.
_GP_ROLES = frozenset({"PP", "FHCP"})


def patient_roles(_value: Value | None, ctx: Context, _node: dict[str, Any]) -> Json:
    """Patient.generalPractitioner from the patient's own ROL segments (after PID, before PV1) whose role is
    primary care provider or family health care professional (IG ROL[Patient-GeneralPractitioner]): the
    PractitionerRole planned for each."""
    out = []
    for seg in ctx.msg.segments[ctx.seg.index + 1:]:
        if seg.id in ("PID", "PV1", "MRG"):
            break
        if seg.id == "ROL" and seg.get(3).upper() in _GP_ROLES:
            role = next((p for p in ctx.planned if p.resource_type == "PractitionerRole" and p.segment is seg), None)
            if role is not None:
                out.append({"reference": role.full_url})
    return out or None


def provider_by_role(_value: Value | None, ctx: Context, node: dict[str, Any]) -> Json:
    """REF: the first PRD whose provider role (PRD-1) is one of ``roles`` -> a Reference by its provider
    identifier (PRD-7) and name (PRD-2); RP/RF the referring provider, RT/CP the one referred to."""
    for seg in ctx.msg.all("PRD"):
        if seg.get(1).upper() not in node["roles"]:
            continue
        name = ctx.engine.render({"$": "PRD-2", "fn": "person_name"}, ctx.at(seg))
        ident = seg.get(7)
        out = {"identifier": {"value": ident}} if ident else {}
        return {**out, "display": name} if name else out or None
    return None


FUNCTIONS: dict[str, Function] = {
    "practitioner_reference": practitioner_reference, "participant": participant,
    "location_identifier": location_identifier, "location_part_of": location_part_of,
    "location_reference": location_reference, "location_name": location_name,
    "role_participants": role_participants, "provider_by_role": provider_by_role, "patient_roles": patient_roles,
}
