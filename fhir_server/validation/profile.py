"""A StructureDefinition snapshot compiled into a tree of element rules, once per (url, version).

Each ``ElementDef`` is one element of the snapshot: cardinality, allowed types (with their profiles and
targetProfiles), fixed[x] / pattern[x], binding, FHIRPath constraints, and its slicing with the slices
(each itself a subtree). The tree follows element ids, so ``Observation.component:systolic.code`` hangs
under the ``systolic`` slice of ``Observation.component``.

``relevant`` marks what a profile changes against the core definition of its type: elements equal to the
core one (and with nothing changed below) are skipped when validating against the profile, because the
base pass (``walker.py`` in base mode) checks them already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_FIXED, _PATTERN = "fixed", "pattern"
SKIPPED_CONSTRAINTS = frozenset({"ele-1"})  # enforced by the structure check (no empty elements), cheaper


@dataclass(frozen=True)
class TypeRef:
    code: str
    profiles: tuple[str, ...] = ()
    target_profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Constraint:
    key: str
    severity: str  # error | warning
    human: str
    expression: str


@dataclass(frozen=True)
class Slicing:
    discriminators: tuple[tuple[str, str], ...]  # (type, path)
    rules: str  # open | closed | openAtEnd
    ordered: bool


@dataclass(eq=False)
class ElementDef:
    id: str
    path: str
    name: str  # last step of the path, "value[x]" for a choice
    min: int
    max: int | None  # None: unbounded
    types: tuple[TypeRef, ...]
    slice_name: str | None = None
    fixed: Any = None
    fixed_kind: str | None = None  # "fixed" | "pattern" when set
    binding: tuple[str, str] | None = None  # (strength, value set url without version)
    constraints: tuple[Constraint, ...] = ()
    content_ref: str | None = None  # "#Questionnaire.item"
    children: dict[str, ElementDef] = field(default_factory=dict)
    slicing: Slicing | None = None
    slices: list[ElementDef] = field(default_factory=list)
    relevant: bool = True
    signature: tuple[Any, ...] = ()

    @property
    def choice(self) -> bool:
        return self.name.endswith("[x]")

    @property
    def type_codes(self) -> frozenset[str]:
        return frozenset(t.code for t in self.types)


@dataclass(eq=False)
class Profile:
    url: str
    version: str
    type: str  # the resource or datatype it constrains
    kind: str
    root: ElementDef
    by_id: dict[str, ElementDef]
    derivation: str = "constraint"
    contexts: tuple[tuple[str, str], ...] = ()  # an extension's (context type, expression)
    is_modifier: bool = False  # an extension's root isModifier


def _type_code(type_: dict[str, Any]) -> str:
    code = str(type_.get("code", ""))
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in type_.get("extension", []):
            if ext.get("url", "").endswith("structuredefinition-fhir-type"):
                return str(ext.get("valueUrl") or ext.get("valueUri"))
        return "string"
    return code


def _fixed(el: dict[str, Any]) -> tuple[str | None, Any]:
    for key, value in el.items():
        if key.startswith(_FIXED) and key != "fixed":
            return _FIXED, value
        if key.startswith(_PATTERN) and key != "pattern":
            return _PATTERN, value
    return None, None


def _element(el: dict[str, Any]) -> ElementDef:
    path: str = el["path"]
    types = tuple(TypeRef(_type_code(t), tuple(t.get("profile") or ()), tuple(t.get("targetProfile") or ()))
                  for t in el.get("type") or ())
    kind, fixed = _fixed(el)
    binding = el.get("binding") or {}
    bound = None
    if binding.get("valueSet") and binding.get("strength") in ("required", "extensible"):
        bound = (str(binding["strength"]), str(binding["valueSet"]).split("|", 1)[0])
    constraints = tuple(
        Constraint(c["key"], c.get("severity", "error"), c.get("human", ""), c["expression"])
        for c in el.get("constraint") or ()
        if c.get("expression") and c.get("key") not in SKIPPED_CONSTRAINTS
        and c.get("severity", "error") in ("error", "warning"))
    slicing = None
    if el.get("slicing"):
        s = el["slicing"]
        slicing = Slicing(tuple((d["type"], d["path"]) for d in s.get("discriminator") or ()),
                          s.get("rules", "open"), bool(s.get("ordered")))
    maximum = el.get("max", "*")
    edef = ElementDef(
        id=el.get("id") or path, path=path, name=path.rsplit(".", 1)[-1], min=int(el.get("min", 0)),
        max=None if maximum == "*" else int(maximum), types=types, slice_name=el.get("sliceName"),
        fixed=fixed, fixed_kind=kind, binding=bound, constraints=constraints,
        content_ref=el.get("contentReference"), slicing=slicing)
    edef.signature = (edef.min, edef.max, types, kind, repr(fixed) if kind else None, bound,
                      tuple(sorted(c.key for c in constraints)))
    return edef


def compile_profile(sd: dict[str, Any], core: dict[str, ElementDef] | None = None) -> Profile:
    """Compile ``sd``'s snapshot. ``core``: the core definition's elements by path, to mark what the profile
    leaves as it is (None: everything is relevant, as for the core definitions themselves)."""
    elements = sd["snapshot"]["element"]
    root = _element(elements[0])
    by_id = {root.id: root}
    stack = [root]
    for raw in elements[1:]:
        edef = _element(raw)
        by_id[edef.id] = edef
        parent_path = edef.path.rpartition(".")[0]
        if edef.slice_name:
            while stack and stack[-1].path != edef.path:
                stack.pop()
            if not stack:
                continue
            base = stack[0] if len(stack) == 1 else _slicing_base(stack, edef.path, edef.slice_name)
            base.slices.append(edef)
        else:
            while stack and stack[-1].path != parent_path:
                stack.pop()
            if not stack:
                continue
            stack[-1].children.setdefault(edef.name, edef)
        stack.append(edef)
    _mark(root, core)
    contexts = tuple((str(c.get("type")), str(c.get("expression"))) for c in sd.get("context") or ()
                     if isinstance(c, dict) and c.get("expression"))
    return Profile(str(sd.get("url", "")), str(sd.get("version") or ""), str(sd.get("type", "")),
                   str(sd.get("kind", "")), root, by_id, str(sd.get("derivation") or "constraint"), contexts,
                   bool(elements[0].get("isModifier")))


def _slicing_base(stack: list[ElementDef], path: str, slice_name: str) -> ElementDef:
    """The element a new slice belongs to: the deepest stack entry with this path and no sliceName (stack
    entries with the same path are that element and its earlier slices); for a reslice (``a/b``), slice a."""
    parent = slice_name.rpartition("/")[0] or None
    for edef in reversed(stack):
        if edef.path == path and edef.slice_name == parent:
            return edef
    return stack[-1]


def _mark(edef: ElementDef, core: dict[str, ElementDef] | None) -> bool:
    changed = False
    for child in edef.children.values():
        changed = _mark(child, core) or changed
    for s in edef.slices:
        _mark(s, core)
        changed = True
    if core is None:
        edef.relevant = True
        return True
    base = core.get(edef.path)
    # an open slicing without slices (IG publishers add one to every extension element) changes nothing
    sliced = bool(edef.slices) or (edef.slicing is not None and edef.slicing.rules == "closed")
    own = base is None or base.signature != edef.signature or edef.slice_name is not None or sliced
    edef.relevant = own or changed
    return edef.relevant


def core_elements(sd: dict[str, Any]) -> dict[str, ElementDef]:
    """The core definition's elements by path, for ``compile_profile``'s comparison."""
    return {edef.path: edef for edef in compile_profile(sd).by_id.values() if edef.slice_name is None}
