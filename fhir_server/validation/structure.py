"""Validate a resource's FHIR JSON against the R4 element tree (``tree.py``).

Checks every rule of http://hl7.org/fhir/R4/json.html that the StructureDefinitions make decidable without
FHIRPath: known element names (choice types included), cardinality (required elements, JSON arrays exactly
for repeating elements), datatypes and primitive syntax, no nulls or empty objects/arrays/strings, ``_x``
companions only for primitives (same length as their value arrays), ``resourceType`` on every nested
resource, and required bindings to closed code lists. Invariants (FHIRPath constraints) are not evaluated.
Also what storage needs: at most ``MAX_DEPTH`` levels of JSON nesting (see there), and no U+0000 in any
string (``primitives.py``; PostgreSQL can hold neither in jsonb nor text).

All problems are reported, one issue each, with the FHIRPath of the element at fault
(``Bundle.entry[2].resource.name[0].family``, ``Observation.value.ofType(Quantity)``).
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import REQUIRED, STRUCTURE, VALUE, Issue
from fhir_server.validation.tree import PRIMITIVE, REGISTRY, RESOURCE, Node, Prop

CODE_INVALID = "code-invalid"
# JSON nesting levels (objects and arrays) a resource may have. orjson, which writes every stored resource and
# every response, stops at 254 levels, and a response can wrap a resource 6 levels deeper (a batch-response
# entry holding a searchset entry); 100 leaves room for both and for any real resource (a Questionnaire with
# 45 levels of nested items is 91 levels deep).
MAX_DEPTH = 100


def validate_structure(resource: dict[str, Any], path: str | None = None) -> list[Issue]:
    """The issues of ``resource`` (a dict with a known R4 ``resourceType``) against R4's definitions."""
    out: list[Issue] = []
    root = path or str(resource.get("resourceType"))
    try:
        _resource(resource, root, out, 1)
    except RecursionError:  # JSON parsers allow ~1,000 levels; no real resource comes near
        out.append(Issue(STRUCTURE, f"{root}: the resource is nested too deeply to validate", expression=(root,)))
    return out


def _issue(out: list[Issue], code: str, path: str, message: str) -> None:
    out.append(Issue(code, f"{path}: {message}", expression=(path,)))


def _resource(value: Any, path: str, out: list[Issue], depth: int) -> None:
    if type(value) is not dict:
        _issue(out, STRUCTURE, path, "must be a JSON object holding a resource")
        return
    resource_type = value.get("resourceType")
    if type(resource_type) is not str:
        _issue(out, REQUIRED, path, "a resource must have a resourceType")
        return
    node = REGISTRY.resource(resource_type)
    if node is None:
        _issue(out, VALUE, path, f"'{resource_type}' is not a FHIR R4 resource type")
        return
    _object(value, node, path, out, depth)


def _complex(value: Any, prop: Prop, path: str, out: list[Issue], depth: int) -> None:
    if prop.kind == RESOURCE:
        _resource(value, path, out, depth)
    elif type(value) is not dict:
        _issue(out, STRUCTURE, path, f"must be a JSON object (a {prop.type_name}), not {_json_kind(value)}")
    elif not value:
        _issue(out, STRUCTURE, path, "an empty object is not allowed: an element must have a value or children")
    else:
        assert prop.node is not None
        _object(value, prop.node, path, out, depth)


def _primitive(value: Any, prop: Prop, path: str, out: list[Issue]) -> None:
    assert prop.check is not None
    problem = prop.check(value)
    if problem is not None:
        _issue(out, VALUE, path, problem)
    elif prop.codes is not None and value not in prop.codes:
        _issue(out, CODE_INVALID, path, f"'{value}' is not a code of the required value set {prop.value_set}")


def _object(obj: dict[str, Any], node: Node, path: str, out: list[Issue], depth: int) -> None:
    """``obj`` is at JSON nesting level ``depth`` (the resource itself: 1)."""
    if depth > MAX_DEPTH:
        _issue(out, STRUCTURE, path, f"the resource is nested more than {MAX_DEPTH} levels deep (JSON objects and "
                                     "arrays), more than this server stores")
        return
    props = node.props
    choices: dict[str, str] | None = None
    for key, value in obj.items():
        prop = props.get(key)
        if prop is None:
            if key == "resourceType" and node.resource:
                continue
            if key.startswith("_") and _companion(obj, key, value, props.get(key[1:]), path, out, depth):
                prop = props[key[1:]]
                if prop.choice is not None:
                    choices = _one_choice(choices, prop, path, out)
                continue
            shown = key if "\x00" not in key else key.replace("\x00", "\\u0000")
            _issue(out, STRUCTURE, f"{path}.{shown}", f"unknown element '{shown}' in {node.name}")
            continue
        if prop.choice is not None:
            choices = _one_choice(choices, prop, path, out)
        if value is None:
            _issue(out, STRUCTURE, f"{path}.{prop.fhir}", "null is not allowed")
        elif prop.many:
            if type(value) is not list:
                _issue(out, STRUCTURE, f"{path}.{prop.fhir}", "must be a JSON array (the element repeats)")
            elif not value:
                _issue(out, STRUCTURE, f"{path}.{prop.fhir}", "an empty array is not allowed")
            elif prop.kind == PRIMITIVE:
                _primitive_array(obj, key, value, prop, path, out)
            else:
                step = f"{path}.{prop.fhir}"
                for i, item in enumerate(value):
                    _complex(item, prop, f"{step}[{i}]", out, depth + 2)
        elif type(value) is list:
            _issue(out, STRUCTURE, f"{path}.{prop.fhir}", "must not be a JSON array (the element does not repeat)")
        elif prop.kind == PRIMITIVE:
            check = prop.check  # inlined _primitive: most values are primitives, and most are valid
            assert check is not None
            if check(value) is not None or (prop.codes is not None and value not in prop.codes):
                _primitive(value, prop, f"{path}.{prop.fhir}", out)
        else:
            _complex(value, prop, f"{path}.{prop.fhir}", out, depth + 1)
    for name, keys in node.required:
        for key in keys:
            if key in obj:
                break
        else:
            _issue(out, REQUIRED, f"{path}.{name}", f"the element '{name}' is required (minimum cardinality 1)")


def _primitive_array(obj: dict[str, Any], key: str, values: list[Any], prop: Prop, path: str,
                     out: list[Issue]) -> None:
    step = f"{path}.{prop.fhir}"
    for i, item in enumerate(values):
        if item is None:
            companions = obj.get("_" + key)
            if not (type(companions) is list and i < len(companions) and companions[i]):
                _issue(out, STRUCTURE, f"{step}[{i}]", "null is only allowed where the '_' array has an extension")
        else:
            _primitive(item, prop, f"{step}[{i}]", out)


def _companion(obj: dict[str, Any], key: str, value: Any, prop: Prop | None, path: str,
               out: list[Issue], depth: int) -> bool:
    """Check a ``_x`` property (id/extensions of primitive ``x``); False when ``x`` is no primitive here."""
    if prop is None or prop.kind != PRIMITIVE or prop.element is None:
        return False
    element = prop.element
    step = f"{path}.{prop.fhir}"
    if not prop.many:
        if type(value) is not dict or not value:
            _issue(out, STRUCTURE, step, f"'{key}' must be a non-empty JSON object (the element's id/extension)")
        else:
            _object(value, element, step, out, depth + 1)
        return True
    values = obj.get(prop.key)
    if type(value) is not list or not value:
        _issue(out, STRUCTURE, step, f"'{key}' must be a non-empty JSON array (the element repeats)")
    elif values is not None and (type(values) is not list or len(values) != len(value)):
        _issue(out, STRUCTURE, step, f"'{key}' must have as many entries as '{prop.key}'")
    elif values is None and all(item is None for item in value):
        _issue(out, STRUCTURE, step, f"'{key}' holds only nulls and '{prop.key}' is absent: the element is empty")
    else:
        for i, item in enumerate(value):
            if item is None:
                continue
            if type(item) is not dict or not item:
                _issue(out, STRUCTURE, f"{step}[{i}]", f"'{key}' entries must be null or non-empty JSON objects")
            else:
                _object(item, element, f"{step}[{i}]", out, depth + 2)
    return True


def _one_choice(choices: dict[str, str] | None, prop: Prop, path: str, out: list[Issue]) -> dict[str, str]:
    """A choice element ``x[x]`` takes one type: valueString and valueQuantity may not both be present."""
    assert prop.choice is not None
    if choices is None:
        choices = {}
    first = choices.setdefault(prop.choice, prop.key)
    if first != prop.key:
        _issue(out, STRUCTURE, f"{path}.{prop.fhir}",
               f"only one type of {prop.choice} is allowed, but both '{first}' and '{prop.key}' are present")
    return choices


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else type(value).__name__
