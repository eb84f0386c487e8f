"""FHIRPath invariants (ElementDefinition.constraint) through fhirpathpy, each expression compiled once.

Most invariants only look at a few child elements (``dom-2``: ``contained.contained.empty()``): when none
of the names an expression mentions is present on the node, its result is that of an empty node, worked
out once per expression, so the common case costs a dictionary scan instead of a FHIRPath run.
Expressions that read beyond the node (``%resource``, ``descendants()``, ``resolve()``...) always run.

fhirpathpy lacks ``hasValue()`` and ``htmlChecks()``; they are supplied here (``htmlChecks`` accepts:
the narrative's XHTML rules are not checked).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser import parse

_GLOBAL = ("%", "$this", "children(", "descendants(", "resolve(", "repeat(", "trace(", "hasValue(", "extension(")
_WORD = re.compile(r"`([^`]+)`|'(?:[^'\\]|\\.)*'|([A-Za-z_][A-Za-z0-9_]*)\s*(\()?")
_KEYWORDS = frozenset({"and", "or", "xor", "implies", "not", "is", "as", "div", "mod", "in", "contains", "true",
                       "false"})


def _has_value(inputs: list[Any]) -> list[bool]:
    return [len(inputs) == 1 and not isinstance(inputs[0], dict | list) and inputs[0] is not None]


def _quiet(label: Any, value: Any) -> None:
    """trace() in the core invariants (dom-3) would print to stdout."""


_OPTIONS: dict[str, Any] = {"traceFn": _quiet, "userInvocationTable": {
    "hasValue": {"fn": _has_value, "arity": {0: []}},
    "htmlChecks": {"fn": lambda inputs: [True], "arity": {0: []}},
}}


class Compiled:
    __slots__ = ("empty", "names", "parsed")

    def __init__(self, expression: str) -> None:
        # R4's invariants use FHIRPath 1.0's as() function, which filtered a collection (dom-3:
        # descendants().as(canonical)); fhirpathpy follows the later rule (singletons only): ofType() is
        # the same filter
        self.parsed = parse(expression.replace(".as(", ".ofType("))
        self.names = _names(expression)
        self.empty: dict[str, bool | None] = {}  # by type: the result on a node with none of ``names``


def _names(expression: str) -> tuple[str, ...] | None:
    """The element names an expression reads on its node; None when it may read more than those."""
    if any(token in expression for token in _GLOBAL):
        return None
    names = []
    for m in _WORD.finditer(expression):
        if m.group(1):
            names.append(m.group(1))
        elif m.group(2) and not m.group(3) and m.group(2) not in _KEYWORDS:
            names.append(m.group(2))
    return tuple(dict.fromkeys(names))


_CACHE: dict[str, Compiled | None] = {}
_LOCK = threading.Lock()


def compiled(expression: str) -> Compiled | None:
    """The compiled expression (None when fhirpathpy cannot parse it)."""
    found = _CACHE.get(expression, False)
    if found is not False:
        return found  # type: ignore[return-value]
    with _LOCK:
        try:
            result: Compiled | None = Compiled(expression)
        except Exception:  # fhirpathpy's parser raises plain exceptions on grammar it lacks
            result = None
        _CACHE[expression] = result
    return result


def _truth(result: Any) -> bool:
    # an invariant fails only on a single false; empty means nothing to check
    return not (len(result) == 1 and result[0] is False)


def holds(expression: str, node: Any, type_path: str, resource: Any) -> bool | None:
    """Whether the invariant holds on ``node``, an instance of ``type_path`` (a type, or the path of a
    BackboneElement: fhirpathpy needs it to resolve choice elements). None: it could not be evaluated."""
    comp = compiled(expression)
    if comp is None:
        return None
    if comp.names is not None and isinstance(node, dict) and not _mentions(node, comp.names):
        if type_path not in comp.empty:
            comp.empty[type_path] = _run(comp, {}, type_path, resource)
        return comp.empty[type_path]
    return _run(comp, node, type_path, resource)


def _mentions(node: dict[str, Any], names: tuple[str, ...]) -> bool:
    for key in node:
        bare = key[1:] if key.startswith("_") else key
        for name in names:
            if bare.startswith(name):
                return True
    return False


def _run(comp: Compiled, node: Any, type_path: str, resource: Any) -> bool | None:
    try:
        data = ResourceNode.create_node(node, type_path)
        return _truth(apply_parsed_path(data, comp.parsed, {"resource": resource, "rootResource": resource},
                                        models["r4"], _OPTIONS))
    except Exception:  # an expression using a function fhirpathpy lacks: reported as not evaluated
        return None
