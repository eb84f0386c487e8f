"""Required and extensible bindings, through the walker's definitions (the terminology service).

required: a code outside the value set is an error. extensible: a warning (other codes, or text, are
allowed when the value set has no suitable concept), except for a coding whose system the value set
includes whole (``compose.include`` with that system and no concept list or filter): a code that is not in
the value set is then not a code of that system at all, an error. A value set or code system the server
cannot evaluate is a warning, once per value set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.validation.matching import codings
from fhir_server.validation.profile import ElementDef

if TYPE_CHECKING:
    from fhir_server.validation.walker import Item, Walker

CODE_INVALID, NOT_FOUND = "code-invalid", "not-found"


def check(walker: Walker, edef: ElementDef, item: Item, *, base: bool) -> None:
    assert edef.binding is not None
    strength, value_set = edef.binding
    found = codings(item.value, item.type or (edef.types[0].code if len(edef.types) == 1 else None))
    if not found:
        return
    result = walker.defs.codes_in(value_set, found)
    if isinstance(result, str):
        if not base and value_set not in walker.warned:  # once per value set, not per coded element
            walker.warned.add(value_set)
            walker.issue(NOT_FOUND, item.path, f"{result}: the {strength} binding was not checked", "warning")
        return
    if result:
        return
    shown = ", ".join(f"{s}#{c}" if s else c for s, c in found)
    if strength == "extensible":
        whole = _whole_systems(walker, value_set)
        invalid = [f"{s}#{c}" for s, c in found if s in whole]
        if invalid:
            walker.issue(CODE_INVALID, item.path, f"{', '.join(invalid)} is not a code of its system, which the "
                                                   f"extensible value set {value_set} includes whole")
            return
    walker.issue(CODE_INVALID, item.path, f"{shown} is not in the {strength} value set {value_set}",
                  "error" if strength == "required" else "warning")


def _whole_systems(walker: Walker, value_set: str) -> set[str]:
    vs = walker.defs.value_set(value_set)
    includes = ((vs or {}).get("compose") or {}).get("include") or []
    return {str(inc["system"]) for inc in includes if isinstance(inc, dict) and inc.get("system")
            and not inc.get("concept") and not inc.get("filter") and not inc.get("valueSet")}
