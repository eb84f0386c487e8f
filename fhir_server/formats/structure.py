"""Element layout of every R4 resource and datatype, read from the snapshots in ``definitions/``: for each
element path, its children in definition order with their JSON names, types, repetition and whether XML
writes them as attributes. The XML converter (xml.py) needs exactly this: the order XML requires, arrays
and primitive types JSON requires."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir_server.definitions import bundle_resources, resource_structure_definitions, type_structure_definitions

SYSTEM_PREFIX = "http://hl7.org/fhirpath/System."


@dataclass(frozen=True)
class Child:
    name: str  # JSON/XML name (a choice element appears once per type: valueQuantity, valueString ...)
    type: str  # a FHIR type code, "Resource" for a nested resource, or "" for an inline backbone element
    repeats: bool
    attribute: bool  # XML attribute (Element.id, Extension.url)
    path: str  # where an inline element's own children are found ("Patient.contact")


@lru_cache(maxsize=1)
def primitive_types() -> frozenset[str]:
    return frozenset(t for t, sd in type_structure_definitions().items() if sd.get("kind") == "primitive-type")


@lru_cache(maxsize=1)
def _index() -> dict[str, list[dict[str, Any]]]:
    """Element path -> its direct child elements (definition order), for every resource and complex type."""
    out: dict[str, list[dict[str, Any]]] = {}
    # Every resource and complex datatype, Element and BackboneElement included (no derivation of their own);
    # profiles of a type (SimpleQuantity: a constraint) add no elements.
    sds = [*resource_structure_definitions().values(),
           *(sd for sd in bundle_resources("profiles-types", "StructureDefinition")
             if sd.get("kind") == "complex-type" and sd.get("derivation") != "constraint")]
    for sd in sds:
        for element in sd["snapshot"]["element"]:
            path = element["path"]
            if "." in path:
                out.setdefault(path.rsplit(".", 1)[0], []).append(element)
            else:
                out.setdefault(path, [])
    return out


@lru_cache(maxsize=4096)
def children(path: str) -> dict[str, Child]:
    """The children of a resource type, a complex datatype or an inline element path, by JSON name."""
    out: dict[str, Child] = {}
    for element in _index().get(path, []):
        full = element["path"]
        name = full.rsplit(".", 1)[1]
        ref = element.get("contentReference")
        repeats = element.get("max") not in ("0", "1")
        # Element.id and Extension.url are XML attributes; a resource's own id is an element.
        attribute = "xmlAttr" in (element.get("representation") or []) or (
            name == "id" and path not in resource_structure_definitions()) or (name == "url" and path == "Extension")
        if ref:  # Questionnaire.item.item -> the children of Questionnaire.item
            out[name] = Child(name, "", repeats, False, ref.lstrip("#"))
            continue
        codes = [t["code"] for t in element.get("type", [])]
        if name.endswith("[x]"):
            stem = name[:-3]
            for code in codes:
                choice = stem + code[0].upper() + code[1:]
                out[choice] = Child(choice, code, repeats, False, full)
            continue
        code = codes[0] if codes else ""
        if code.startswith(SYSTEM_PREFIX):
            code = "string" if name != "value" else code  # Resource.id: an XML element with a value
        if code in ("BackboneElement", "Element") and _index().get(full):
            code = ""  # defined inline: its children are at this path
        out[name] = Child(name, code, repeats, attribute, full)
    return out


def children_of_type(code: str, path: str) -> dict[str, Child]:
    return children(path) if code == "" else children(code)
