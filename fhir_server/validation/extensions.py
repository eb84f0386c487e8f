"""Extensions in base mode: the definition found by URL, where it may be used (StructureDefinition.context),
and modifier extensions (``isModifier`` on the definition's root).

- unknown URL: a warning in ``extension`` (a profile that closes its extension slicing makes it an error
  there), an error in ``modifierExtension`` (a receiver may not ignore a modifier it does not understand);
- a known extension whose ``isModifier`` does not match the element it is in (``extension`` /
  ``modifierExtension``): an error;
- its contexts: ``element`` contexts are compared with the holding element's path (core paths, content
  references followed: ``Questionnaire.item`` also for nested items; the profile-qualified form
  ``url#Patient.name`` by its path), with its type and the types that type derives from (``code`` is a
  ``string``, ``Age`` a ``Quantity``, a resource a ``DomainResource``/``Resource``), or ``Element``;
  ``extension`` contexts with the URL of the extension holding it; ``fhirpath`` contexts are not evaluated
  (accepted).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fhir_server.definitions import resource_structure_definitions, type_structure_definitions
from fhir_server.errors import INVALID, STRUCTURE
from fhir_server.validation.profile import ElementDef

if TYPE_CHECKING:
    from fhir_server.validation.walker import Item, Walker

EXTENSION = "extension"
_INDEX = re.compile(r"\[\d+\]")
_OF_TYPE = re.compile(r"\.ofType\([A-Za-z]+\)")
_ANY = frozenset({"Element", "Base"})
# contexts the R4 definitions themselves break: the core snapshots put fhir-type on ElementDefinition.type,
# its context says ElementDefinition.type.code (the FHIR validator makes the same exception)
_ALSO = {"http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type": ("ElementDefinition.type",)}


@lru_cache(maxsize=1024)
def lineage(type_name: str) -> frozenset[str]:
    """``type_name`` and the types it derives from (``code`` -> string, Element, Base)."""
    out, name = {type_name}, type_name
    for _ in range(10):
        sd = type_structure_definitions().get(name) or resource_structure_definitions().get(name)
        base = str((sd or {}).get("baseDefinition") or "")
        if not base:
            break
        name = base.rsplit("/", 1)[-1]
        out.add(name)
    if type_name in resource_structure_definitions():
        out |= {"Resource", "DomainResource"}
    return frozenset(out)


def element_path(instance_path: str, resource_path: str, resource_type: str) -> str:
    """``Bundle.entry[0].resource.name[1]`` in the resource at ``Bundle.entry[0].resource`` -> ``Patient.name``."""
    rest = instance_path[len(resource_path):] if instance_path.startswith(resource_path) else ""
    return resource_type + _INDEX.sub("", _OF_TYPE.sub("", rest))


def allowed_here(contexts: tuple[tuple[str, str], ...], paths: set[str], types: frozenset[str],
                 holder_url: str | None) -> bool:
    if not contexts:
        return True
    for kind, expression in contexts:
        if kind == "fhirpath":
            return True
        if kind == "extension":
            if holder_url is not None and expression.split("|", 1)[0] == holder_url:
                return True
            continue
        where = expression.split("#", 1)[1] if "#" in expression else expression
        if where in _ANY or where in types or where in paths or where.removesuffix("[x]") in paths:
            return True
    return False


def check(walker: Walker, item: Item, holder: Item, holder_def: ElementDef, resource: dict[str, Any],
          *, modifier: bool) -> None:
    """``item``, an extension of ``holder`` (its element ``holder_def``), in ``extension`` or, with
    ``modifier``, ``modifierExtension``."""
    ext = item.value
    url = ext.get("url") if isinstance(ext, dict) else None
    if not isinstance(url, str) or ("://" not in url and not url.startswith("urn:")):
        return  # a sub-extension of a complex extension: its parent's definition slices it
    if url.startswith("urn:fhir-server:"):
        return  # this server's own markers (Binary blob pointer, HL7 v2 ACK)
    profile = walker.defs.profile(url)
    if profile is None:
        if modifier:
            walker.issue(EXTENSION, item.path, f"the modifier extension {url} is not known to this server: "
                                                "a modifier that is not understood may not be ignored")
        else:
            walker.issue(EXTENSION, item.path, f"the extension {url} is not known to this server", "warning")
        return
    if profile.type != "Extension":
        walker.issue(INVALID, item.path, f"{url} is a {profile.type} definition, not an extension")
        return
    if profile.is_modifier != modifier:
        belongs = "modifierExtension" if profile.is_modifier else "extension"
        walker.issue(STRUCTURE, item.path, f"{url} is {'' if profile.is_modifier else 'not '}a modifier "
                                            f"extension: it belongs in {belongs}")
    prefix, rtype = walker.resource_at()
    here = element_path(holder.path, prefix, rtype)
    paths = {here, holder_def.path}
    type_ = holder.type or next((t for t in sorted(holder_def.type_codes) if t in ("BackboneElement", "Element")),
                                None) or (rtype if holder.path == prefix else None)
    types = lineage(type_) if type_ else frozenset()
    holder_url = holder.value.get("url") if type_ == "Extension" and isinstance(holder.value, dict) else None
    if not allowed_here(profile.contexts, paths, types, holder_url) and not paths & set(_ALSO.get(url, ())):
        where = ", ".join(e for _, e in profile.contexts)
        walker.issue(STRUCTURE, item.path, f"the extension {url} is not allowed on {here} "
                                            f"(its context: {where})")
    walker.element(profile.root, item.__class__(ext, item.path, "Extension"), resource, base=False)
