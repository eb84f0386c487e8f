"""Which slice an element instance belongs to, by the slicing's discriminators.

value / pattern: the slice's fixed[x] or pattern[x] at the discriminator path (looked up inside a fixed or
pattern value when the path goes below it, as the spec allows: ``code.coding.code`` against a
patternCodeableConcept); for extensions sliced by ``url``, the slice's type profile is the url.
exists: the slice's min/max at the path. type: the slice's types at the path. profile ("profile-lite"):
a nested resource fits a slice when its resourceType is the profile's type, preferring the slice whose
profile the resource names in ``meta.profile`` (no full validation per candidate slice).
The first slice whose discriminators all match wins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.validation.matching import contains, core_type, equal, values_at
from fhir_server.validation.profile import ElementDef

if TYPE_CHECKING:
    from fhir_server.validation.walker import Definitions, Item


def slice_of(defs: Definitions, sliced: ElementDef, item: Item) -> ElementDef | None:
    assert sliced.slicing is not None
    discriminators = sliced.slicing.discriminators
    if not discriminators:
        return None
    claimed = _claimed(item.value)
    fallback = None
    for s in sliced.slices:
        verdicts = [_matches(defs, s, item, kind, path, claimed) for kind, path in discriminators]
        if all(v is not False for v in verdicts):
            if any(v == "claimed" for v in verdicts) or "profile" not in {k for k, _ in discriminators}:
                return s
            fallback = fallback or s
    return fallback


def _claimed(value: Any) -> set[str]:
    if isinstance(value, dict):
        for res in [value, value.get("resource")]:
            if isinstance(res, dict) and isinstance(res.get("meta"), dict):
                return {p.split("|", 1)[0] for p in res["meta"].get("profile") or [] if isinstance(p, str)}
    return set()


def _target(s: ElementDef, steps: list[str]) -> tuple[ElementDef, list[str]]:
    """The slice's element at ``steps`` as far as the tree goes, and the steps left over."""
    current, i = s, 0
    while i < len(steps):
        if current.fixed_kind is not None:
            break
        child = current.children.get(steps[i]) or current.children.get(steps[i] + "[x]")
        if child is None:
            break
        current, i = child, i + 1
    return current, steps[i:]


def _steps(path: str) -> list[str]:
    return [] if path == "$this" else [p for p in path.replace("$this.", "").split(".") if p]


def _matches(defs: Definitions, s: ElementDef, item: Item, kind: str, path: str, claimed: set[str]) -> bool | str:
    steps = _steps(path)
    if any("(" in step for step in steps):
        return False  # resolve(), extension('...'), ofType(): not supported as discriminators here
    target, rest = _target(s, steps)
    actual = values_at(item.value, steps) if steps else [item.value]
    if kind in ("value", "pattern"):
        if target.fixed_kind is None:
            if rest == ["url"] and target.types and target.types[0].profiles:
                return any(a in target.types[0].profiles for a in actual)
            return False
        expected = values_at(target.fixed, rest) if rest else [target.fixed]
        same = equal if target.fixed_kind == "fixed" else contains
        return any(same(a, e) for a in actual for e in expected)
    if rest:
        return False
    if kind == "exists":
        if target.min >= 1:
            return bool(actual)
        if target.max == 0:
            return not actual
        return True
    if kind == "type":
        if not steps and item.type is not None:
            return item.type in target.type_codes
        types = {a.get("resourceType") for a in actual if isinstance(a, dict)}
        return bool(types & target.type_codes)
    if kind == "profile":
        return _profile(defs, target, actual, claimed)
    return False


def _profile(defs: Definitions, target: ElementDef, actual: list[Any], claimed: set[str]) -> bool | str:
    urls = [p for t in target.types for p in t.profiles]
    types = {a.get("resourceType") for a in actual if isinstance(a, dict)}
    if any(u in claimed for u in urls):
        return "claimed"
    for url in urls:
        name = core_type(url)
        if name is None:
            prof = defs.profile(url)
            name = prof.type if prof is not None else None
        if name in types:
            return True
    return False
