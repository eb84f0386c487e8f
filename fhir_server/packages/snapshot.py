"""Snapshot generation for StructureDefinitions shipped with only a differential (``packages install``).

The common subset of the spec's algorithm: start from the base definition's snapshot; each differential
element is merged onto the element with its id (its keys win, constraints add up); an element the base lacks
is created from what it refines: a slice (``X.y:name``) copies the sliced element and everything below it, a
child of a datatype element (``Patient.identifier.system``) unfolds that datatype's own definition under it
(through several levels: ``Claim.careTeam.role.coding.system``). Every ABDM 6.5.0 profile, snapshot removed,
comes back with the same elements as the snapshot it ships. A ``contentReference`` element constrained below
(``Questionnaire.item.item.text``) gets a copy of the referenced children. A reslice (``X.y:a/b``) copies
slice a; a choice element named by its type (``Observation.valueQuantity``) is the type slice
``value[x]:valueQuantity``, as the spec reads it. What it cannot place (an id neither in the base nor below a
datatype or content reference) leaves the profile without a snapshot, reported unusable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fhir_server.validation.matching import type_by_suffix

_MERGED_LISTS = ("constraint", "mapping", "condition")


class SnapshotError(ValueError):
    pass


def _id(el: dict[str, Any]) -> str:
    if el.get("id"):
        return str(el["id"])
    return str(el["path"]) + (f":{el['sliceName']}" if el.get("sliceName") else "")


def _below(elements: list[dict[str, Any]], pos: int) -> int:
    """Index after the element at ``pos`` and everything below it (its children and its slices)."""
    root = elements[pos]["id"]
    end = pos + 1
    while end < len(elements) and (elements[end]["id"].startswith(root + ".")
                                   or elements[end]["id"].startswith(root + ":")):
        end += 1
    return end


def _merge(target: dict[str, Any], diff: dict[str, Any]) -> None:
    for key, value in diff.items():
        if key in ("id", "path"):
            continue
        if key in _MERGED_LISTS and isinstance(target.get(key), list):
            known = {repr(v) for v in target[key]}
            target[key] = target[key] + [v for v in value if repr(v) not in known]
        else:
            target[key] = copy.deepcopy(value)


def _rebase(elements: list[dict[str, Any]], old: str, new: str, old_path: str, new_path: str) -> list[dict[str, Any]]:
    out = []
    for original in elements:
        el = copy.deepcopy(original)
        el["id"] = new + _id(original)[len(old):]
        el["path"] = new_path + el["path"][len(old_path):]
        out.append(el)
    return out


def _ensure(elements: list[dict[str, Any]], eid: str, datatype: Callable[[str], dict[str, Any] | None],
            depth: int = 0) -> int:
    """The index of element ``eid``, unfolding the datatypes of its ancestors as needed."""
    ids = [el["id"] for el in elements]
    if eid in ids:
        return ids.index(eid)
    head = eid.rpartition(".")[0]
    if not head or ":" in eid.rpartition(".")[2] or depth > 20:
        raise SnapshotError(f"{eid}: not in the base")
    pos = _ensure(elements, head, datatype, depth + 1)
    parent = elements[pos]
    if parent.get("contentReference") and _below(elements, pos) == pos + 1:
        _unfold_reference(elements, pos)
        ids = [el["id"] for el in elements]
        if eid not in ids:
            raise SnapshotError(f"{eid}: not an element of {parent['path']}")
        return ids.index(eid)
    types = parent.get("type") or []
    if len(types) != 1 or _below(elements, pos) != pos + 1:
        raise SnapshotError(f"{eid}: cannot unfold {head} (it has {len(types)} types or children already)")
    dt = datatype(str(types[0]["code"]))
    if dt is None or not dt.get("snapshot"):
        raise SnapshotError(f"{eid}: no definition for the datatype {types[0]['code']}")
    inner = dt["snapshot"]["element"]
    elements[pos + 1:pos + 1] = _rebase(inner[1:], _id(inner[0]), head, inner[0]["path"], parent["path"])
    ids = [el["id"] for el in elements]
    if eid not in ids:
        raise SnapshotError(f"{eid}: not an element of {types[0]['code']}")
    return ids.index(eid)


def _unfold_reference(elements: list[dict[str, Any]], pos: int) -> None:
    """``Questionnaire.item.item`` (contentReference ``#Questionnaire.item``) constrained below: it gets a copy
    of the referenced element's children (the base's, not its slices) and that element's type in place of the
    reference, so its children are its own from then on."""
    parent = elements[pos]
    ref = str(parent["contentReference"]).split("#", 1)[-1]
    ids = [el["id"] for el in elements]
    if ref not in ids:
        raise SnapshotError(f"{parent['id']}: the content reference #{ref} is not in the base")
    source = ids.index(ref)
    inner = [e for e in elements[source + 1:_below(elements, source)] if ":" not in e["id"][len(ref):]]
    copies = _rebase(inner, ref, parent["id"], elements[source]["path"], parent["path"])  # before the change below
    parent.pop("contentReference")
    parent["type"] = copy.deepcopy(elements[source].get("type") or [{"code": "BackboneElement"}])
    elements[pos + 1:pos + 1] = copies


def _choice_type(sliced: str, name: str) -> str | None:
    """The type a slice named like a renamed choice element stands for: ``value[x]`` + ``valueQuantity``."""
    stem = sliced.rsplit(".", 1)[-1].split(":", 1)[0].removesuffix("[x]")
    if not sliced.endswith("[x]") or not name.startswith(stem):
        return None
    return type_by_suffix().get(name[len(stem):])


def _renamed(eid: str, ids: set[str]) -> str:
    """``Observation.valueQuantity.code`` -> ``Observation.value[x]:valueQuantity.code``: a choice element named
    by its type (allowed in differentials) is the type slice of the choice element."""
    steps = eid.split(".")
    out = steps[0]
    for step in steps[1:]:
        bare = step.split(":", 1)[0]
        if f"{out}.{bare}" not in ids and f"{out}.{step}" not in ids:
            for key in type_by_suffix():
                stem = bare[:-len(key)]
                if bare.endswith(key) and stem and f"{out}.{stem}[x]" in ids:
                    step = f"{stem}[x]:{bare}" + step[len(bare):]
                    break
        out = f"{out}.{step}"
    return out


def generate(sd: dict[str, Any], base: dict[str, Any], datatype: Callable[[str], dict[str, Any] | None]
             ) -> list[dict[str, Any]]:
    """The snapshot of ``sd`` from its differential and ``base``'s snapshot; ``datatype(code)``: the
    StructureDefinition of a datatype, to unfold elements the base does not detail."""
    elements = copy.deepcopy(base["snapshot"]["element"])
    for el in elements:
        el["id"] = _id(el)
    root_path = str(sd.get("type") or elements[0]["path"])
    for diff in (sd.get("differential") or {}).get("element") or []:
        did = _renamed(_id(diff), {el["id"] for el in elements})
        if did in {el["id"] for el in elements}:
            _merge(elements[_ensure(elements, did, datatype)], diff)
            continue
        head, _, last = did.rpartition(".")
        if ":" in last:  # a new slice: a copy of the sliced element and what is below it
            sliced = f"{head}.{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
            name = last.split(":", 1)[1]
            if "/" in name:  # a reslice (a/b): a copy of slice a, placed after it and its earlier reslices
                sliced = f"{sliced}:{name.rpartition('/')[0]}"
            pos = _ensure(elements, sliced, datatype)
            end = _below(elements, pos)
            while end < len(elements) and elements[end]["id"].startswith(sliced + "/"):
                end = _below(elements, end)
            copies = _rebase([e for e in elements[pos:_below(elements, pos)] if ":" not in e["id"][len(sliced):]],
                             sliced, did, elements[pos]["path"], elements[pos]["path"])
            copies[0].pop("slicing", None)
            copies[0]["sliceName"] = name
            choice = _choice_type(sliced, name)
            if choice is not None:  # value[x]:valueQuantity, a type slice: that type only
                copies[0]["type"] = [t for t in copies[0].get("type") or [] if t.get("code") == choice] or [
                    {"code": choice}]
                elements[pos].setdefault("slicing", {"discriminator": [{"type": "type", "path": "$this"}],
                                                     "ordered": False, "rules": "open"})
            _merge(copies[0], diff)
            elements[end:end] = copies
            continue
        _merge(elements[_ensure(elements, did, datatype)], diff)
    if elements and elements[0]["path"] != root_path:
        raise SnapshotError(f"the base's root {elements[0]['path']} is not {root_path}")
    return elements
