"""Which slice an element instance belongs to, by the slicing's discriminators.

value / pattern: the slice's fixed[x] or pattern[x] at the discriminator path (looked up inside a fixed or
pattern value when the path goes below it, as the spec allows: ``code.coding.code`` against a
patternCodeableConcept); for extensions sliced by ``url``, the slice's type profile is the url.
exists: the slice's min/max at the path. type: the slice's types at the path. profile ("profile-lite"):
a nested resource fits a slice when its resourceType is the profile's type, preferring the slice whose
profile the resource names in ``meta.profile``; when several slices remain, the first whose profile the
resource validates against (the chosen slice's own checks report what does not conform).

Paths are simple element paths with the functions the spec allows in discriminators: ``$this``,
``resolve()`` (a reference followed to its target in the request, a Bundle entry or a contained resource; on
the profile's side, into the Reference's targetProfile: a ``profile``/``type`` discriminator on
``resolve()`` compares the target with the targetProfiles), ``extension('url')`` (the extensions with that
url; on the profile's side the slice of that extension, or its definition) and ``ofType(T)``.
The first slice whose discriminators all match wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fhir_server.validation.matching import contains, core_type, equal, type_by_suffix, values_at
from fhir_server.validation.profile import ElementDef

if TYPE_CHECKING:
    from fhir_server.validation.walker import Definitions, Item

Resolve = Callable[[str], "dict[str, Any] | None"]
Conforms = Callable[["dict[str, Any]", str], "str | None"]
_STEP = re.compile(r"(?:[^.(']|'[^']*'|\([^)]*\))+")
_CALL = re.compile(r"^(resolve|extension|ofType)\((?:'([^']*)'|([A-Za-z]*))\)$")


def slice_of(defs: Definitions, sliced: ElementDef, item: Item, resolve: Resolve | None = None,
             conforms: Conforms | None = None) -> ElementDef | None:
    """The slice ``item`` belongs to. ``conforms(resource, url)`` (None when it does) tells apart several
    slices a ``profile`` discriminator leaves open (same type, no ``meta.profile`` claim): the first whose
    profile the resource validates against wins, else the first of them."""
    assert sliced.slicing is not None
    discriminators = sliced.slicing.discriminators
    if not discriminators:
        return None
    candidates: list[ElementDef] = []
    for s in sliced.slices:
        verdicts = [_matches(defs, s, item, kind, path, resolve) for kind, path in discriminators]
        if all(v is not False for v in verdicts):
            if any(v == "claimed" for v in verdicts) or "profile" not in {k for k, _ in discriminators}:
                return s
            candidates.append(s)
    if len(candidates) > 1 and conforms is not None:
        for s in candidates:
            if all(_conforming(defs, s, item, path, resolve, conforms) for kind, path in discriminators
                   if kind == "profile"):
                return s
    return candidates[0] if candidates else None


def _conforming(defs: Definitions, s: ElementDef, item: Item, path: str, resolve: Resolve | None,
                conforms: Conforms) -> bool:
    steps = steps_of(path)
    if steps and steps[-1] == "resolve()":
        reference, _ = _target(defs, s, steps[:-1])
        urls = [p for t in reference.types for p in t.target_profiles]
    else:
        target, _ = _target(defs, s, steps)
        urls = [p for t in target.types for p in t.profiles]
    values = actual_values(item.value, steps, resolve) if steps else [item.value]
    for value in values:
        if not isinstance(value, dict) or "resourceType" not in value:
            continue  # a datatype: profile-lite only
        if not any(core_type(u) == value["resourceType"] or (core_type(u) is None and conforms(value, u) is None)
                   for u in urls):
            return False
    return True


def steps_of(path: str) -> list[str]:
    """``extension('http://x.org/a.b').value`` -> [``extension('http://x.org/a.b')``, ``value``]."""
    return [s for s in _STEP.findall(path) if s != "$this"]


def _claimed(values: list[Any]) -> set[str]:
    out: set[str] = set()
    for value in values:
        if isinstance(value, dict):
            for res in [value, value.get("resource")]:
                if isinstance(res, dict) and isinstance(res.get("meta"), dict):
                    out |= {p.split("|", 1)[0] for p in res["meta"].get("profile") or [] if isinstance(p, str)}
    return out


def _call(step: str) -> tuple[str, str] | None:
    m = _CALL.match(step)
    return (m.group(1), m.group(2) or m.group(3) or "") if m else None


def actual_values(value: Any, steps: list[str], resolve: Resolve | None) -> list[Any]:
    """The instance's values at the discriminator path."""
    current = [value]
    for i, step in enumerate(steps):
        call = _call(step)
        if call is None:
            nxt = _call(steps[i + 1]) if i + 1 < len(steps) else None
            if nxt is not None and nxt[0] == "ofType":  # value.ofType(Quantity): valueQuantity only
                key = step + nxt[1][:1].upper() + nxt[1][1:]
                current = [v for c in current if isinstance(c, dict) and key in c
                           for v in (c[key] if isinstance(c[key], list) else [c[key]])]
            else:
                current = [v for c in current for v in values_at(c, [step])]
        elif call[0] == "resolve":
            refs = [c.get("reference") for c in current if isinstance(c, dict)]
            current = [r for r in (resolve(ref) if resolve and isinstance(ref, str) else None for ref in refs) if r]
        elif call[0] == "extension":
            current = [e for c in current if isinstance(c, dict) for e in c.get("extension") or []
                       if isinstance(e, dict) and e.get("url") == call[1]]
    return current


def _extension_slice(defs: Definitions, current: ElementDef, url: str) -> ElementDef | None:
    ext = current.children.get("extension")
    for s in ext.slices if ext is not None else []:
        if any(url in t.profiles for t in s.types):
            return s
        fixed = s.children.get("url")
        if fixed is not None and fixed.fixed == url:
            return s
    prof = defs.profile(url)
    return prof.root if prof is not None else None


def _into_profile(defs: Definitions, urls: list[str]) -> ElementDef | None:
    if len(urls) != 1:
        return None
    prof = defs.profile(urls[0].split("|", 1)[0])
    return prof.root if prof is not None else None


def _target(defs: Definitions, s: ElementDef, steps: list[str]) -> tuple[ElementDef, list[str]]:
    """The slice's element at ``steps`` as far as the definitions go, and the steps left over."""
    current, i = s, 0
    while i < len(steps):
        if current.fixed_kind is not None:
            break
        call = _call(steps[i])
        nxt: ElementDef | None = None
        if call is not None and call[0] == "ofType":
            i += 1
            continue
        if call is not None and call[0] == "resolve":
            nxt = _into_profile(defs, [p for t in current.types for p in t.target_profiles])
        elif call is not None:
            nxt = _extension_slice(defs, current, call[1])
        else:
            nxt = current.children.get(steps[i]) or current.children.get(steps[i] + "[x]")
            if nxt is None and current.types and current.types[0].code == "Extension" and current.types[0].profiles:
                into = _into_profile(defs, list(current.types[0].profiles))  # an extension slice: its definition
                nxt = into.children.get(steps[i]) or into.children.get(steps[i] + "[x]") if into else None
        if nxt is None:
            break
        current, i = nxt, i + 1
    return current, [step for step in steps[i:] if not step.startswith("ofType(")]  # no type inside a value


def _matches(defs: Definitions, s: ElementDef, item: Item, kind: str, path: str,
             resolve: Resolve | None) -> bool | str:
    steps = steps_of(path)
    if steps and steps[-1] == "resolve()" and kind in ("profile", "type"):
        reference, rest = _target(defs, s, steps[:-1])
        if rest:
            return False
        targets = actual_values(item.value, steps, resolve)
        urls = [p for t in reference.types for p in t.target_profiles]
        return _profile(defs, urls, targets) if kind == "profile" else _types(defs, urls, targets)
    target, rest = _target(defs, s, steps)
    actual = actual_values(item.value, steps, resolve) if steps else [item.value]
    if kind in ("value", "pattern"):
        if target.fixed_kind is None:
            if rest == ["url"] and target.types and target.types[0].profiles:
                return any(a in target.types[0].profiles for a in actual)
            nested = _through_slices(target, rest) if rest and len(rest) < len(steps) else []
            if nested:  # bp's code.coding.code: the value is fixed on the slice coding:SBPCode.code
                return any((equal if t.fixed_kind == "fixed" else contains)(a, t.fixed)
                           for t in nested for a in actual)
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
        if steps and steps[-1].startswith("ofType("):
            return bool(actual)
        types = {a.get("resourceType") for a in actual if isinstance(a, dict)}
        if not types and steps and len(actual) == 1:  # value[x] at the path: its type by the JSON key
            return _choice_type(item.value, steps) in target.type_codes
        return bool(types & target.type_codes)
    if kind == "profile":
        return _profile(defs, [p for t in target.types for p in t.profiles], actual)
    return False


def _through_slices(parent: ElementDef, steps: list[str]) -> list[ElementDef]:
    """The fixed or pattern elements at ``steps`` below ``parent`` reached through its elements' slices (the
    discriminator path of a slice that slices again, as bp's component.code.coding:SBPCode)."""
    current = [parent, *parent.slices]
    for step in steps:
        nxt: list[ElementDef] = []
        for c in current:
            child = c.children.get(step) or c.children.get(step + "[x]")
            if child is not None:
                nxt += [child, *child.slices]
        current = nxt
    return [c for c in current if c.fixed_kind is not None]


def _choice_type(value: Any, steps: list[str]) -> str | None:
    parents = actual_values(value, steps[:-1], None) if len(steps) > 1 else [value]
    stem = steps[-1]
    for parent in parents:
        if isinstance(parent, dict):
            for key in parent:
                if key.startswith(stem) and key[len(stem):] in type_by_suffix():
                    return type_by_suffix()[key[len(stem):]]
    return None


def _type_of(defs: Definitions, url: str) -> str | None:
    name = core_type(url)
    if name is None:
        prof = defs.profile(url.split("|", 1)[0])
        name = prof.type if prof is not None else None
    return name


def _types(defs: Definitions, urls: list[str], actual: list[Any]) -> bool:
    types = {a.get("resourceType") for a in actual if isinstance(a, dict)}
    return any(_type_of(defs, u) in types for u in urls)


def _profile(defs: Definitions, urls: list[str], actual: list[Any]) -> bool | str:
    if any(u.split("|", 1)[0] in _claimed(actual) for u in urls):
        return "claimed"
    return _types(defs, urls, actual)
