"""FHIRPath invariants: the vacuity shortcut must give the same answer as running the expression."""

from __future__ import annotations

import pytest

from fhir_server.definitions import resource_structure_definitions, type_structure_definitions
from fhir_server.validation import invariants
from fhir_server.validation.invariants import _names, holds


@pytest.mark.parametrize(("expression", "names"), [
    ("contained.contained.empty()", ("contained",)),
    ("contained.where(('#'+id in %resource.descendants().reference).not()).empty()", ("contained",)),
    ("value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()",
     ("value", "component")),
    ("(type = 'document') implies (identifier.system.exists() and identifier.value.exists())", ("type", "identifier")),
    ("reference.startsWith('#').not() or (reference.substring(1) in %rootResource.contained.id)", None),
    ("hasValue() or (children().count() > id.count())", None),
    ("%resource.status = 'final'", None),
    ("iif(a.exists(), b, c)", None),
    ("text.`div`.exists()", ("text",)),
])
def test_names_an_expression_starts_from(expression: str, names: tuple[str, ...] | None) -> None:
    assert _names(expression) == names


def _all_constraints() -> list[tuple[str, str, str]]:
    out = []
    for sds in (resource_structure_definitions(), type_structure_definitions()):
        for sd in sds.values():
            for el in sd["snapshot"]["element"]:
                for c in el.get("constraint") or []:
                    if c.get("expression") and c["key"] != "ele-1":
                        out.append((c["key"], c["expression"], el["path"]))
    return out


def test_shortcut_agrees_with_fhirpath_on_every_core_invariant() -> None:
    """On a node with none of its start names, the cached answer equals a real run on that node."""
    checked = 0
    for key, expression, path in _all_constraints():
        comp = invariants.compiled(expression)
        if comp is None or comp.names is None:
            continue
        node = {"unrelatedElement": {"x": 1}}  # has none of the names
        if invariants._mentions(node, comp.names):
            continue
        real = invariants._run(comp, node, path, {"resourceType": "Basic"}, {"resourceType": "Basic"})
        assert holds(expression, node, path, {"resourceType": "Basic"}) == real, key
        checked += 1
    assert checked > 150


def test_supplied_functions_and_r4_as() -> None:
    period = "start.hasValue().not() or end.hasValue().not() or (start <= end)"
    assert holds(period, {"start": "2020-01-01", "end": "2021-01-01"}, "Period", {}) is True
    assert holds(period, {"start": "2022-01-01", "end": "2021-01-01"}, "Period", {}) is False
    dom3 = next(e for k, e, _ in _all_constraints() if k == "dom-3")
    lonely = {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1"}]}
    assert holds(dom3, lonely, "Patient", lonely) is False  # needs as() over a collection (R4 FHIRPath 1.0)
    linked = {**lonely, "managingOrganization": {"reference": "#o1"}}
    assert holds(dom3, linked, "Patient", linked) is True


def test_ref_1_natively_against_the_root_resource() -> None:
    ref1 = next(e for k, e, _ in _all_constraints() if k == "ref-1")
    root = {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1"}]}
    assert holds(ref1, {"reference": "#o1"}, "Reference", root) is True
    assert holds(ref1, {"reference": "#o2"}, "Reference", root) is False
    assert holds(ref1, {"reference": "Organization/o2"}, "Reference", root) is True
    inner = root["contained"][0]
    assert holds(ref1, {"reference": "#o1"}, "Reference", inner, root) is True  # from inside a contained one


def test_unparseable_or_failing_expressions_are_not_evaluated() -> None:
    assert holds("name.where(", {"name": [{"family": "a"}]}, "Patient", {}) is None
    assert holds("name.family.conformsTo('x')", {"name": [{"family": "a"}]}, "Patient", {}) is None
