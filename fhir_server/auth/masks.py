"""Role-level element masks as data: elements a role never sees (nor writes) in types it may otherwise read.

The role table (roles.py) says which types a role reaches; this table takes clinical elements out of the
administrative types a non-clinical role needs. Each entry is an R4 element of the type: a top-level
element (``reasonCode``; its primitive sibling ``_reasonCode`` goes with it), an element of a 0..1
backbone element (``hospitalization.dietPreference``), or the extensions with one URL
(``extension(http://...)``). A masked resource carries the SUBSETTED security label (``meta.security``),
as ``_elements`` marks its subsets, on every type listed for the role, whether or not anything was there to
take out (so the label itself says nothing about what is hidden).

Writes by the role are of what it sees: a masked element sent in a create, update or patch is refused
(403, the element named); an update keeps the stored values of the masked elements (merged back), so
saving the masked view never erases what the role cannot see. Applied by the access policy
(``AccessContext.mask`` / ``restore_masked``) on every path that hands out or stores resources.
"""

from __future__ import annotations

import copy
from typing import Any

from fhir_server.errors import FORBIDDEN, FhirError

SUBSETTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SUBSETTED = {"system": SUBSETTED_SYSTEM, "code": "SUBSETTED", "display": "subsetted"}
SD = "http://hl7.org/fhir/StructureDefinition/"

# The narrative and contained resources can repeat anything the structured elements hold, so a masked type
# loses both. Encounter keeps what the front desk works with (class, type, serviceType, period, location,
# participants, admission logistics); Appointment keeps scheduling (serviceType, specialty, start/end,
# description, patientInstruction, participants); Patient is demographics, minus the clinical extensions.
ROLE_MASKS: dict[str, dict[str, tuple[str, ...]]] = {
    "receptionist": {
        "Encounter": ("text", "contained", "reasonCode", "reasonReference", "diagnosis",
                      "hospitalization.reAdmission", "hospitalization.dietPreference",
                      "hospitalization.dischargeDisposition"),
        "Appointment": ("text", "contained", "reasonCode", "reasonReference", "supportingInformation", "comment"),
        "Patient": ("text", f"extension({SD}patient-disability)", f"extension({SD}patient-cadavericDonor)"),
    },
}


def role_masks(role: str | None, resource_type: str) -> tuple[str, ...]:
    return ROLE_MASKS.get(role or "", {}).get(resource_type, ())


def _split(spec: str) -> tuple[str | None, str, str | None]:
    """(backbone parent or None, element, extension url or None)."""
    if spec.startswith("extension(") and spec.endswith(")"):
        return None, "extension", spec[len("extension("):-1]
    parent, _, name = spec.rpartition(".")
    return parent or None, name, None


def _holder(content: dict[str, Any], parent: str | None) -> dict[str, Any] | None:
    if parent is None:
        return content
    value = content.get(parent)
    return value if isinstance(value, dict) else None


def _is_subsetted(coding: Any) -> bool:
    return isinstance(coding, dict) and coding.get("system") == SUBSETTED_SYSTEM and coding.get("code") == "SUBSETTED"


def _labelled(meta: Any) -> dict[str, Any]:
    meta = dict(meta) if isinstance(meta, dict) else {}
    security = [s for s in meta.get("security") or [] if isinstance(s, dict)]
    if not any(_is_subsetted(s) for s in security):
        security.append(SUBSETTED)
    meta["security"] = security
    return meta


def mask_content(content: dict[str, Any], specs: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``content`` without the masked elements, labelled SUBSETTED."""
    out = {**content, "meta": _labelled(content.get("meta"))}
    for spec in specs:
        parent, name, url = _split(spec)
        if parent is not None and isinstance(out.get(parent), dict):
            out[parent] = dict(out[parent])
        holder = _holder(out, parent)
        if holder is None:
            continue
        if url is not None:
            kept = [e for e in holder.get("extension") or [] if not (isinstance(e, dict) and e.get("url") == url)]
            if kept:
                holder["extension"] = kept
            else:
                holder.pop("extension", None)
            continue
        holder.pop(name, None)
        holder.pop("_" + name, None)
        if parent is not None and not holder:
            out.pop(parent)
    return out


def restore_masked(resource_type: str, content: dict[str, Any], previous: dict[str, Any] | None,
                   specs: tuple[str, ...]) -> dict[str, Any]:
    """What to store when the role writes ``content``: refused (403) if it sets a masked element; else a copy
    with the stored masked elements of ``previous`` put back and the SUBSETTED label taken off."""
    for spec in specs:
        parent, name, url = _split(spec)
        holder = _holder(content, parent)
        if holder is None:
            continue
        present = any(isinstance(e, dict) and e.get("url") == url for e in holder.get("extension") or []) \
            if url is not None else (name in holder or "_" + name in holder)
        if present:
            where = f"{resource_type}.{spec}"
            raise FhirError(403, FORBIDDEN, f"{where} is not writable with this user's role", (where,))
    out = copy.deepcopy(content)
    meta = out.get("meta")
    if isinstance(meta, dict) and meta.get("security"):
        security = [s for s in meta["security"] if not _is_subsetted(s)]
        out["meta"] = {**meta, "security": security} if security else {k: v for k, v in meta.items() if k != "security"}
    if previous is None:
        return out
    for spec in specs:
        parent, name, url = _split(spec)
        old = _holder(previous, parent)
        if old is None:
            continue
        if parent is not None and not isinstance(out.get(parent), dict):
            out[parent] = {}
        holder = _holder(out, parent)
        assert holder is not None
        if url is not None:
            hidden = [e for e in old.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]
            if hidden:
                holder["extension"] = [*(holder.get("extension") or []), *copy.deepcopy(hidden)]
            continue
        for key in (name, "_" + name):
            if key in old:
                holder[key] = copy.deepcopy(old[key])
        if parent is not None and not holder:
            out.pop(parent)
    return out
