"""FHIRPath invariants (ElementDefinition.constraint) through fhirpathpy, each expression compiled once.

Most invariants start from a few child elements (``dom-3``: ``contained.where(...)``): when none of the
names an expression starts from is present on the node, its result is that of an empty node, worked out
once per expression and type, so the common case costs a dictionary scan instead of a FHIRPath run.
Expressions that read beyond that (``%resource`` outside a function argument, ``hasValue()`` of the
node itself) always run; ``ref-1`` (on every Reference) runs natively, as the same rule in Python.

fhirpathpy lacks ``hasValue()`` and ``htmlChecks()``; they are supplied here (``htmlChecks`` accepts: the
walker answers txt-1 and txt-2, the two invariants written so, with ``narrative.py``).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser import parse

_TOKEN = re.compile(r"'(?:[^'\\]|\\.)*'|`[^`]+`|[%$]?[A-Za-z_][A-Za-z0-9_]*|[().]|[^\s'`%$A-Za-z_().]+|\s+")
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
    """The child names an expression starts its paths from on its node (``contained`` in
    ``contained.where(...).empty()``); None when it may read more than its node's children: a variable
    (``%resource``) or a function applied to the node itself (``hasValue()``) outside any function argument.
    Names inside function arguments are read on the items of a path from the node, so they need no entry."""
    tokens = [t for t in _TOKEN.findall(expression) if not t.isspace()]
    names: list[str] = []
    calls: list[bool] = []  # for each open parenthesis: is it a function call's?
    prev = ""
    for i, tok in enumerate(tokens):
        inside = any(calls)
        if tok == "(":
            calls.append(bool(prev) and (prev[0].isalpha() or prev[0] in "_`") and prev not in _KEYWORDS)
        elif tok == ")":
            if calls:
                calls.pop()
        elif tok[0] in "%$":
            if not inside:
                return None
        elif tok[0].isalpha() or tok[0] in "_`":
            rooted = prev != "."
            call = i + 1 < len(tokens) and tokens[i + 1] == "("
            if rooted and not inside and tok not in _KEYWORDS:
                if call:
                    return None  # a function of the node itself
                names.append(tok.strip("`"))
        prev = tok
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


def _ref_1(node: Any, root: Any) -> bool:
    """ref-1, natively: a local reference (``#id``) must name a resource contained in the root resource."""
    ref = node.get("reference") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#"):
        return True
    contained = root.get("contained") if isinstance(root, dict) else None
    return ref[1:] in {c.get("id") for c in contained or [] if isinstance(c, dict)}


_NATIVE = {"reference.startsWith('#').not() or (reference.substring(1).trace('url') in "
           "%rootResource.contained.id.trace('ids'))": _ref_1}


def holds(expression: str, node: Any, type_path: str, resource: Any, root: Any = None) -> bool | None:
    """Whether the invariant holds on ``node``, an instance of ``type_path`` (a type, or the path of a
    BackboneElement: fhirpathpy needs it to resolve choice elements), in ``resource`` (``root``: the
    resource that contains it, for contained resources). None: it could not be evaluated."""
    native = _NATIVE.get(expression)
    if native is not None:
        return native(node, root if root is not None else resource)
    comp = compiled(expression)
    if comp is None:
        return None
    if comp.names is not None and isinstance(node, dict) and not _mentions(node, comp.names):
        if type_path not in comp.empty:
            comp.empty[type_path] = _run(comp, {}, type_path, resource, resource)
        return comp.empty[type_path]
    return _run(comp, node, type_path, resource, root if root is not None else resource)


def _mentions(node: dict[str, Any], names: tuple[str, ...]) -> bool:
    for key in node:
        bare = key[1:] if key.startswith("_") else key
        for name in names:
            if bare.startswith(name):
                return True
    return False


def _run(comp: Compiled, node: Any, type_path: str, resource: Any, root: Any) -> bool | None:
    try:
        data = ResourceNode.create_node(node, type_path)
        return _truth(apply_parsed_path(data, comp.parsed, {"resource": resource, "rootResource": root},
                                        models["r4"], _OPTIONS))
    except Exception:  # an expression using a function fhirpathpy lacks: reported as not evaluated
        return None
