"""Walks a resource against compiled StructureDefinitions (``profile.py``) and reports what it breaks.

Two modes over the same trees:
- *base*: the core definition of the resource type and, below every complex value, of its datatype:
  FHIRPath invariants, reference target types, extensions (known URL -> validated against its definition,
  unknown -> warning), required bindings on Coding/CodeableConcept, and resources nested in Bundle
  entries or ``contained`` (their own ``meta.profile`` included). Cardinality, JSON types and required
  code lists were checked already by the structure check (``structure.py``).
- *profile*: the elements a profile changes (``ElementDef.relevant``): cardinality, allowed types, type
  profiles, targetProfile types, fixed[x] / pattern[x], required and extensible bindings through the
  terminology service, slicing (value, pattern, exists, type, profile discriminators; slice cardinality;
  closed slicing) and the profile's own invariants.

Every issue names the element by FHIRPath in ``expression`` (``Observation.component[1].code``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fhir_server.errors import INVALID, REQUIRED, STRUCTURE, VALUE, Issue
from fhir_server.validation import bindings, extensions, invariants, narrative, references
from fhir_server.validation.matching import (
    contains,
    core_type,
    equal,
    primitive_types,
    type_by_suffix,
)
from fhir_server.validation.profile import ElementDef, Profile
from terminology import ucum

INVARIANT, NOT_FOUND = "invariant", "not-found"
_CONTAINERS = frozenset({"BackboneElement", "Element"})
_NESTED = frozenset({"Resource", "DomainResource"})

# Quantity and its profiles in R4 (datatypes.html): each may state a UCUM code.
_QUANTITIES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"})

class Definitions(Protocol):
    """What the walker looks up: compiled definitions and value set membership."""

    def core(self, type_name: str) -> Profile | None: ...

    def profile(self, url: str) -> Profile | None: ...

    def codes_in(self, value_set: str, codes: list[tuple[str | None, str]]) -> bool | str: ...

    def value_set(self, url: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Item:
    value: Any  # the JSON value (for a primitive: the value, or None when only "_x" is present)
    path: str  # its FHIRPath
    type: str | None  # its type, when known (choice suffix, single-typed element, resource type)
    companion: dict[str, Any] | None = None  # a primitive's "_x" object (id, extension)

    @property
    def node(self) -> Any:
        return self.companion if self.type in primitive_types() else self.value


class Walker:
    def __init__(self, defs: Definitions, *, unknown_profile_severity: str = "error") -> None:
        self.defs = defs
        self.out: list[Issue] = []
        self.unknown_profile_severity = unknown_profile_severity
        self._done: set[tuple[str, str]] = set()  # (constraint key, path): each invariant once per element
        self._validated: set[tuple[int, str]] = set()  # (id of the resource dict, profile url)
        self.local: dict[str, str] = {}  # fullUrl / #id -> resource type, for reference targets
        self._entries: dict[str, dict[str, Any]] = {}  # fullUrl and Type/id -> a Bundle entry's resource
        self._conformance: dict[tuple[int, str], str | None] = {}  # (id of a target, profile) -> its first error
        self.warned: set[str] = set()
        self._roots: list[dict[str, Any]] = []  # containers of the contained resource being walked
        self._at: list[tuple[str, str]] = []  # (path, type) of the resources being walked, innermost last

    # --- entry points ---------------------------------------------------------------------------------

    def resource(self, resource: dict[str, Any], path: str, profiles: list[str]) -> None:
        """Base pass over ``resource`` plus each profile in ``profiles`` (and nested resources' own)."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return
        if rtype == "Bundle":
            for entry in resource.get("entry") or []:
                res = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(res, dict):
                    continue
                if entry.get("fullUrl"):
                    self.local[str(entry["fullUrl"])] = str(res.get("resourceType"))
                    self._entries[str(entry["fullUrl"])] = res
                if isinstance(res.get("id"), str):
                    self._entries.setdefault(f"{res.get('resourceType')}/{res['id']}", res)
                elif str(entry.get("fullUrl", "")).startswith("http"):  # http://x/fhir/Patient/1: Patient/1
                    self._entries.setdefault("/".join(str(entry["fullUrl"]).split("/")[-2:]), res)
        for c in resource.get("contained") or []:
            if isinstance(c, dict) and c.get("id"):
                self.local["#" + str(c["id"])] = str(c.get("resourceType"))
        core = self.defs.core(rtype)
        item = Item(resource, path, rtype)
        self._at.append((path, rtype))
        try:
            if core is not None:
                self.element(core.root, item, resource, base=True)
            for url in profiles:
                self.against(url, item, resource, self.unknown_profile_severity)
        finally:
            self._at.pop()

    def target(self, reference: str, resource: dict[str, Any]) -> dict[str, Any] | None:
        """The resource ``reference`` points at when it is in this request: contained in the resource (or
        its container), or an entry of the Bundle being validated."""
        if reference.startswith("#"):
            root = self._roots[-1] if self._roots else resource
            for c in root.get("contained") or []:
                if isinstance(c, dict) and c.get("id") == reference[1:]:
                    return c
            return None
        found = self._entries.get(reference)
        if found is None and "/" in reference:
            found = self._entries.get("/".join(reference.split("/")[-2:]))
        return found

    def conforms(self, target: dict[str, Any], url: str) -> str | None:
        """None when ``target`` validates against the profile ``url`` with no errors, else its first error
        (once per target and profile; a target met again while it is being checked counts as conforming)."""
        key = (id(target), url)
        if key not in self._conformance:
            self._conformance[key] = None
            sub = Walker(self.defs)
            sub.local, sub._entries, sub._conformance = self.local, self._entries, self._conformance
            rtype = str(target.get("resourceType"))
            sub._at.append((rtype, rtype))
            sub.against(url, Item(target, rtype, rtype), target, "error")
            errors = [i.diagnostics for i in sub.out if i.severity in ("error", "fatal")]
            self._conformance[key] = errors[0] if errors else None
        return self._conformance[key]

    def resource_at(self) -> tuple[str, str]:
        """The path and type of the resource being walked (the innermost nested one)."""
        return self._at[-1] if self._at else ("", "")

    def against(self, url: str, item: Item, resource: dict[str, Any], unknown: str) -> None:
        """Validate a resource (or datatype value) against the profile ``url`` (once per resource)."""
        bare = url.split("|", 1)[0]
        if core_type(bare) is not None and core_type(bare) == item.type:
            return  # the core definition: the base pass did it
        key = (id(item.value), bare)
        if key in self._validated:
            return
        self._validated.add(key)
        profile = self.defs.profile(bare)
        if profile is None:
            self.issue(NOT_FOUND, item.path, f"the profile {bare} is not known to this server", unknown)
            return
        if item.type is not None and profile.type not in (item.type, "Resource", "DomainResource", "Element"):
            self.issue(INVALID, item.path, f"the profile {bare} is for {profile.type}, not {item.type}")
            return
        self.element(profile.root, item, resource, base=False)

    # --- one element instance -------------------------------------------------------------------------

    def element(self, edef: ElementDef, item: Item, resource: dict[str, Any], *, base: bool) -> None:
        target = edef
        if edef.content_ref:
            target = self._content(edef) or edef
        if not base:
            self._checks(edef, item, resource)
        elif item.type in ("Coding", "CodeableConcept") and edef.binding and edef.binding[0] == "required":
            bindings.check(self, edef, item, base=True)
        if item.type == "Reference" or (edef.types and edef.types[0].code == "Reference"):
            references.check(self, edef, item, resource)
        if base and item.type in _QUANTITIES:
            self._ucum(item)
        node = item.node
        for c in target.constraints:
            mark = (c.key, item.path)
            if mark in self._done:
                continue
            self._done.add(mark)
            type_path = target.path if (target.type_codes & _CONTAINERS or not target.types) else (
                item.type or target.path)
            if c.key in narrative.KEYS and target.path == "Narrative.div":
                failure = narrative.failure(c.key, item.value)
                if failure is not None:
                    self.issue(INVARIANT, item.path, f"{c.key}: {failure}", c.severity)
                continue
            root = self._roots[-1] if self._roots else None
            subject = node if node is not None else {}
            if item.type in primitive_types() and item.value is not None and c.key != "ele-1":
                subject = item.value  # vs-1 and the like test the primitive's value: ($this as dateTime)
            result = invariants.holds(c.expression, subject, type_path, resource, root)
            if result is False:
                self.issue(INVARIANT, item.path, f"{c.key}: {c.human}", c.severity)
            elif result is None and c.key not in self.warned:  # said once, not per element
                self.warned.add(c.key)
                self.issue(INVARIANT, item.path, f"{c.key} could not be evaluated (FHIRPath not supported here): "
                                                  f"{c.expression}", "information")
        if not isinstance(node, dict):
            return
        children = target.children
        if base and not children and item.type is not None:
            self._datatype(item, resource)
            return
        for child in children.values():
            if not base and not child.relevant:
                continue
            items = self.items(node, child, item.path)
            if not base:
                self._cardinality(child, items, item.path)
                if child.slicing and (child.slices or child.slicing.rules == "closed"):
                    self._slices(child, items, resource, item.path)
            for it in items:
                if base and child.name in ("extension", "modifierExtension"):
                    extensions.check(self, it, item, target, resource, modifier=child.name == "modifierExtension")
                if base and child.type_codes & _NESTED and isinstance(it.value, dict):
                    self._nested(it, resource)
                    continue
                self.element(child, it, resource, base=base)

    def _ucum(self, item: Item) -> None:
        """A Quantity whose system is UCUM must carry a UCUM expression as its code (the HL7 validator's
        check; the unit may be any text)."""
        value = item.value
        if not isinstance(value, dict) or value.get("system") != ucum.SYSTEM:
            return
        code = value.get("code")
        if isinstance(code, str) and not ucum.is_valid(code):
            self.issue(bindings.CODE_INVALID, f"{item.path}.code",
                       f"{code!r} is not a valid UCUM expression (system {ucum.SYSTEM})")

    def _datatype(self, item: Item, resource: dict[str, Any]) -> None:
        """Base mode below an element the resource definition does not detail: the datatype's definition."""
        if item.type in primitive_types():
            holder = self.defs.core(str(item.type))
            for i, ext in enumerate((item.companion or {}).get("extension") or []):
                if holder is not None:
                    extensions.check(self, Item(ext, f"{item.path}.extension[{i}]", "Extension"), item, holder.root,
                                     resource, modifier=False)
            return
        if item.type in _NESTED:
            return
        core = self.defs.core(str(item.type))
        if core is not None and core.root.children:
            self.element(core.root, item, resource, base=True)

    def _nested(self, item: Item, container: dict[str, Any]) -> None:
        res = item.value
        meta = res.get("meta") if isinstance(res.get("meta"), dict) else {}
        profiles = [p for p in meta.get("profile") or [] if isinstance(p, str)]
        contained = item.path.rsplit(".", 1)[-1].startswith("contained")
        if contained:  # %rootResource of a contained resource is its container (ref-1, dom-3)
            self._roots.append(self._roots[-1] if self._roots else container)
        try:
            self.resource(res, item.path, [])
            for url in profiles:
                self.against(url, Item(res, item.path, str(res.get("resourceType"))), res, "warning")
        finally:
            if contained:
                self._roots.pop()

    def _content(self, edef: ElementDef) -> ElementDef | None:
        ref = str(edef.content_ref).split("#", 1)[-1]
        core = self.defs.core(ref.split(".", 1)[0])
        return None if core is None else core.by_id.get(ref)

    # --- values of a child element --------------------------------------------------------------------

    def items(self, node: dict[str, Any], child: ElementDef, path: str) -> list[Item]:
        name = child.name
        if name.endswith("[x]"):
            stem, out = name[:-3], []
            suffixes = type_by_suffix()
            choice: str
            for key in node:
                if key.startswith(stem) and key[len(stem):] in suffixes:
                    choice = suffixes[key[len(stem):]]
                    out += _expand(node[key], node.get("_" + key), f"{path}.{stem}.ofType({choice})", choice)
                elif key.startswith("_" + stem) and key[len(stem) + 1:] in suffixes and key[1:] not in node:
                    choice = suffixes[key[len(stem) + 1:]]
                    out += _expand(None, node[key], f"{path}.{stem}.ofType({choice})", choice)
            return out
        value, companion = node.get(name), node.get("_" + name)
        if value is None and companion is None:
            return []
        type_ = child.types[0].code if len(child.types) == 1 else None
        if type_ in _CONTAINERS:
            type_ = None
        if type_ in _NESTED and isinstance(value, dict | list):
            return [Item(v, p, str(v.get("resourceType")) if isinstance(v, dict) else None)
                    for v, p in _indexed(value, f"{path}.{name}")]
        return _expand(value, companion, f"{path}.{name}", type_)

    # --- profile checks -------------------------------------------------------------------------------

    def _checks(self, edef: ElementDef, item: Item, resource: dict[str, Any]) -> None:
        if edef.choice and item.type is not None and edef.types and item.type not in edef.type_codes:
            allowed = ", ".join(sorted(edef.type_codes))
            self.issue(STRUCTURE, item.path, f"the type {item.type} is not allowed here (allowed: {allowed})")
            return
        if edef.fixed_kind is not None and item.value is not None:
            ok = equal(item.value, edef.fixed) if edef.fixed_kind == "fixed" else contains(item.value, edef.fixed)
            if not ok:
                self.issue(VALUE, item.path, f"the value must {'be' if edef.fixed_kind == 'fixed' else 'match'} "
                                              f"{_show(edef.fixed)} ({edef.fixed_kind}[x] of {edef.id})")
        if edef.binding is not None:
            bindings.check(self, edef, item, base=False)
        for t in edef.types:
            if t.profiles and t.code != "Extension" and (item.type is None or t.code == item.type
                                                         or t.code in _NESTED):
                self._type_profile(t.profiles, item, resource)

    def _type_profile(self, profiles: tuple[str, ...], item: Item, resource: dict[str, Any]) -> None:
        if isinstance(item.value, dict) and "resourceType" in item.value:
            res = item.value
            claimed = set((res.get("meta") or {}).get("profile") or []) if isinstance(res.get("meta"), dict) \
                else set()
            fitting = [p for p in profiles if p in claimed] or [
                p for p in profiles if (self.defs.profile(p) or _NoProfile).type == res.get("resourceType")]
            if fitting:
                self.against(fitting[0], item, res, "warning")
            return
        if len(profiles) == 1:
            self.against(profiles[0], item, resource, "warning")

    def _cardinality(self, child: ElementDef, items: list[Item], path: str) -> None:
        n = len(items)
        where = f"{path}.{child.name.removesuffix('[x]')}"
        if n < child.min:
            self.issue(REQUIRED, where, f"minimum cardinality of {child.name} is {child.min} ({child.id}), "
                                         f"found {n}")
        elif child.max is not None and n > child.max:
            self.issue(STRUCTURE, where, f"maximum cardinality of {child.name} is {child.max} ({child.id}), "
                                          f"found {n}")

    def _slices(self, child: ElementDef, items: list[Item], resource: dict[str, Any], parent: str | None = None
                ) -> None:
        """``items``: the values of ``child`` in the element at the path ``parent``."""
        from fhir_server.validation.slicing import slice_of

        assert child.slicing is not None
        counts = {id(s): 0 for s in child.slices}
        order = {id(s): i for i, s in enumerate(child.slices)}
        last, rules, unsliced = -1, child.slicing.rules, False
        resliced: dict[int, list[Item]] = {}  # by slice
        for it in items:
            chosen = slice_of(self.defs, child, it, lambda ref: self.target(ref, resource), self.conforms)
            if chosen is None:
                if rules == "closed":
                    self.issue(STRUCTURE, it.path, f"matches no slice of {child.id}, and the slicing is closed")
                unsliced = True
                continue
            if rules == "openAtEnd" and unsliced:
                self.issue(STRUCTURE, it.path, f"the slice '{chosen.slice_name}' follows an element that matches "
                                                f"no slice: {child.id} allows those only at the end (openAtEnd)")
            if child.slicing.ordered and order[id(chosen)] < last:
                self.issue(STRUCTURE, it.path, f"the slice '{chosen.slice_name}' is out of order: {child.id} "
                                                "requires its slices in the order the profile defines them")
            last = max(last, order[id(chosen)])
            counts[id(chosen)] += 1
            self.element(chosen, it, resource, base=False)
            resliced.setdefault(id(chosen), []).append(it)
        for s in child.slices:  # a reslice (a/b) slices what slice a holds
            if s.slicing is not None and s.slices:
                self._slices(s, resliced.get(id(s), []), resource, parent)
        if parent is None and items:
            parent = items[0].path.rsplit(".", 1)[0]
        for s in child.slices:
            n = counts[id(s)]
            if n < s.min or (s.max is not None and n > s.max):
                limit = f"at least {s.min}" if n < s.min else f"at most {s.max}"
                where = f"{parent}.{child.name.removesuffix('[x]')}" if parent else child.path
                self.issue(REQUIRED if n < s.min else STRUCTURE, where,
                            f"the slice '{s.slice_name}' of {child.id} needs {limit} element(s), found {n}")

    def issue(self, code: str, path: str, message: str, severity: str = "error") -> None:
        self.out.append(Issue(code, f"{path}: {message}", severity=severity, expression=(path,)))


class _NoProfile:
    type = ""


def _indexed(value: Any, path: str) -> list[tuple[Any, str]]:
    if isinstance(value, list):
        return [(v, f"{path}[{i}]") for i, v in enumerate(value) if v is not None]
    return [(value, path)]


def _expand(value: Any, companion: Any, path: str, type_: str | None) -> list[Item]:
    if isinstance(value, list) or isinstance(companion, list):
        values = value if isinstance(value, list) else []
        companions = companion if isinstance(companion, list) else []
        out = []
        for i in range(max(len(values), len(companions))):
            v = values[i] if i < len(values) else None
            c = companions[i] if i < len(companions) else None
            if v is not None or c is not None:
                out.append(Item(v, f"{path}[{i}]", type_, c if isinstance(c, dict) else None))
        return out
    return [Item(value, path, type_, companion if isinstance(companion, dict) else None)]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
