"""Compiled FHIRPath for search parameter expressions: a fast path walker, fhirpathpy for the rest.

fhirpathpy costs ~40 us per evaluation; with ~40 parameters per resource that alone would cap ingest near
600 resources/s. Nearly all R4 search expressions are simple paths, optionally ending in a type cast
(``(Observation.value as Quantity)``, ``.as(dateTime)``, ``.ofType(Reference)``) or filtering with
``where(resolve() is Patient)`` / ``where(system='email')``. Those compile to a plain dict walker here;
anything else is compiled once by fhirpathpy with the R4 model.

``resolve()`` cannot run at index time (no database lookups while writing), and fhirpathpy does not
implement it; ``X.where(resolve() is T)`` is therefore answered from the reference itself: the type in
``Reference.reference`` (``Patient/1``, ``http://x/Patient/1``) or ``Reference.type``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

from fhir_server.definitions import bundle_resources

Evaluator = Callable[[dict[str, Any]], list[Any]]

_NAME = r"[A-Za-z][A-Za-z0-9_]*"
_STEP = re.compile(
    rf"\.(?P<name>{_NAME})(?![A-Za-z0-9_(])"
    r"|\.where\(resolve\(\) is (?P<resolve>[A-Za-z]+)\)"
    rf"|\.where\((?P<field>{_NAME})\s*=\s*'(?P<literal>[^'\\]*)'\)"
    r"|\.extension\('(?P<url>[^'\\]+)'\)"
    rf"|\.(?:as|ofType)\((?P<cast>{_NAME})\)"
    rf"|\s+as\s+(?P<pcast>{_NAME})\)")
_FUNCTIONS = {"where", "as", "ofType", "exists", "resolve", "extension", "first", "last", "empty", "not",
              "is", "memberOf", "hasValue"}
Step = tuple[str, str, str]  # (child, name, cast) | (resolve, type, "") | (where, field, literal)


@lru_cache(maxsize=1)
def choice_names() -> frozenset[str]:
    """Element names that are choices (``value[x]``) anywhere in R4: JSON spells them ``valueQuantity``."""
    names = set()
    for bundle in ("profiles-resources", "profiles-types"):
        for sd in bundle_resources(bundle, "StructureDefinition"):
            for el in (sd.get("snapshot") or {}).get("element", []):
                path = el.get("path", "")
                if path.endswith("[x]"):
                    names.add(path.rsplit(".", 1)[-1][:-3])
    return frozenset(names)


def reference_type(ref: Any) -> str | None:
    """The target type of a Reference: from ``reference`` (relative or absolute) or ``Reference.type``."""
    if not isinstance(ref, dict):
        return None
    text = ref.get("reference")
    if isinstance(text, str) and "/" in text and not text.startswith(("#", "urn:")):
        segments = text.split("/")
        if len(segments) >= 4 and segments[-2] == "_history":
            segments = segments[:-2]
        if len(segments) >= 2:
            return segments[-2]
    rtype = ref.get("type")
    return rtype if isinstance(rtype, str) else None


def _children(node: dict[str, Any], name: str, cast: str | None, choices: frozenset[str]) -> Any:
    if cast is not None and name in choices:
        return node.get(name + cast[0].upper() + cast[1:])
    value = node.get(name)
    if value is None and name in choices:
        for key, item in node.items():
            if len(key) > len(name) and key.startswith(name) and key[len(name)].isupper():
                return item
    return value


def _walker(steps: list[Step]) -> Evaluator:
    choices = choice_names()

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        nodes: list[Any] = [resource]
        for kind, a, b in steps:
            out: list[Any] = []
            if kind == "child":
                cast = b or None
                for node in nodes:
                    if isinstance(node, dict):
                        value = _children(node, a, cast, choices)
                        if value is None:
                            continue
                        if isinstance(value, list):
                            out.extend(value)
                        else:
                            out.append(value)
            elif kind == "resolve":
                out = [n for n in nodes if reference_type(n) == a]
            else:  # where(field='literal')
                out = [n for n in nodes if isinstance(n, dict) and n.get(a) == b]
            if not out:
                return out
            nodes = out
        return nodes

    return evaluate


def _compile_fast(part: str, resource_type: str) -> Evaluator | None:
    """A walker for the simple forms of search expressions; None when fhirpathpy is needed."""
    paren = part.startswith("(")
    pos = 1 if paren else 0
    if not part.startswith(resource_type, pos):
        return None
    pos += len(resource_type)
    steps: list[Step] = []
    while pos < len(part):
        m = _STEP.match(part, pos)
        if m is None:
            return None
        pos = m.end()
        if m["name"]:
            if m["name"] in _FUNCTIONS:
                return None
            steps.append(("child", m["name"], ""))
        elif m["resolve"]:
            steps.append(("resolve", m["resolve"], ""))
        elif m["field"]:
            steps.append(("where", m["field"], m["literal"]))
        elif m["url"]:
            steps += [("child", "extension", ""), ("where", "url", m["url"])]
        else:
            if m["pcast"]:
                if not paren:
                    return None
                paren = False
            if not steps or steps[-1][0] != "child" or steps[-1][2]:
                return None
            steps[-1] = ("child", steps[-1][1], m["cast"] or m["pcast"])
    if paren or not steps:
        return None
    return _walker(steps)


def _compile_fhirpath(part: str) -> Evaluator:
    compiled = fhirpathpy.compile(part, models["r4"])

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        result = compiled(resource, {})
        return list(result) if result else []

    return evaluate


def root_keys(expression: str, resource_type: str) -> frozenset[str] | None:
    """JSON keys of which the resource needs at least one for the expression to yield anything; None when
    that cannot be told cheaply (fhirpathpy parts, choice elements). Lets extraction skip most parameters."""
    from fhir_server.search.registry import split_union

    choices = _top_level_choices(resource_type)
    keys: set[str] = set()
    for part in split_union(expression):
        m = _STEP.match(part, len(resource_type) + (1 if part.startswith("(") else 0))
        if _compile_fast(part, resource_type) is None or m is None or not m["name"]:
            return None
        keys.update(choices.get(m["name"], (m["name"],)))
    return frozenset(keys)


@lru_cache(maxsize=256)
def _top_level_choices(resource_type: str) -> dict[str, tuple[str, ...]]:
    """``effective`` -> (effectiveDateTime, effectivePeriod, ...) for the type's top-level choice elements."""
    from fhir_server.definitions import resource_structure_definitions

    out: dict[str, tuple[str, ...]] = {}
    sd = resource_structure_definitions().get(resource_type, {})
    for el in (sd.get("snapshot") or {}).get("element", []):
        path = el.get("path", "")
        if path.count(".") == 1 and path.endswith("[x]"):
            name = path.split(".")[1][:-3]
            out[name] = tuple(name + t["code"][0].upper() + t["code"][1:] for t in el.get("type", []))
    return out


@lru_cache(maxsize=8192)
def compile_expression(expression: str, resource_type: str) -> Evaluator:
    """One evaluator for a (per-type) search expression, union parts compiled separately and cached."""
    from fhir_server.search.registry import split_union

    evaluators = [_compile_fast(p, resource_type) or _compile_fhirpath(p) for p in split_union(expression)]
    if len(evaluators) == 1:
        return evaluators[0]

    def union(resource: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        for ev in evaluators:
            out.extend(ev(resource))
        return out

    return union
