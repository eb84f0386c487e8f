"""Which search parameters are unions of others (registry.find_unions), from the R4 definitions and made up."""

from __future__ import annotations

from fhir_server.search.registry import Registry, SearchParam, core_registry, find_unions, normal_part


def sp(code: str, expression: str, type_: str = "token", components: tuple[tuple[str, str], ...] = ()) -> SearchParam:
    return SearchParam(code=code, type=type_, url=f"http://x/{code}", base="Observation", expression=expression,
                       components=components)


def test_the_r4_unions_are_observations_combo_parameters() -> None:
    registry = core_registry()
    unions = {(t, p.code): p.union_of for t in registry.by_type for p in registry.params(t).values() if p.union_of}
    assert unions == {
        ("Observation", "combo-code"): ("code", "component-code"),
        ("Observation", "combo-data-absent-reason"): ("component-data-absent-reason", "data-absent-reason"),
        ("Observation", "combo-value-concept"): ("component-value-concept", "value-concept"),
        ("Observation", "combo-value-quantity"): ("component-value-quantity", "value-quantity"),
        ("Observation", "combo-code-value-concept"): ("code-value-concept", "component-code-value-concept"),
        ("Observation", "combo-code-value-quantity"): ("code-value-quantity", "component-code-value-quantity"),
    }
    assert {p.code for p in registry.stored("Observation")}.isdisjoint(c for _, c in unions)


def test_covers_must_match_exactly_and_be_stored_themselves() -> None:
    params = {p.code: p for p in [
        sp("a", "Observation.a"), sp("b", "Observation.b"), sp("c", "Observation.c"),
        sp("ab", "Observation.a | Observation.b"),  # a union of a and b
        sp("abc", "Observation.a | Observation.b | Observation.c"),  # of a, b and c: never of "ab"
        sp("abd", "Observation.a | Observation.b | Observation.d"),  # d is nobody's: stored
        sp("ab-string", "Observation.a | Observation.b", "string"),  # other type: no cover
        sp("ab-ref", "Observation.a | Observation.b", "reference"),  # references are always stored
    ]}
    params["ra"], params["rb"] = sp("ra", "Observation.a", "reference"), sp("rb", "Observation.b", "reference")
    assert find_unions(params) == {"ab": ("a", "b"), "abc": ("a", "b", "c")}


def test_composites_need_the_same_component_expressions() -> None:
    code_value = (("http://x/code", "code"), ("http://x/v", "value.as(Quantity)"))
    params = {p.code: p for p in [
        sp("code", "Observation.code"), sp("v", "Observation.value", "quantity"),
        sp("own", "Observation", "composite", code_value),
        sp("comp", "Observation.component", "composite", code_value),
        sp("both", "Observation | Observation.component", "composite", code_value),
        sp("other", "Observation | Observation.component", "composite",
           (("http://x/code", "code"), ("http://x/v", "value.as(CodeableConcept)"))),
    ]}
    assert find_unions(params) == {"both": ("comp", "own")}


def test_a_runtime_definition_is_resolved_again() -> None:
    registry = core_registry().copy()
    assert registry.get("Observation", "code") is not None
    registry.add_definition({"resourceType": "SearchParameter", "url": "http://x/code-or-category",
                             "code": "code-or-category", "base": ["Observation"], "type": "token",
                             "expression": "Observation.code | Observation.category"})
    added = registry.get("Observation", "code-or-category")
    assert added is not None and added.union_of == ("category", "code")
    assert Registry().params("Observation") == {}


def test_the_r4_conjunctions_are_observations_code_value_composites() -> None:
    registry = core_registry()
    found = {(t, p.code): p.conjunction_of for t in registry.by_type for p in registry.params(t).values()
             if p.conjunction_of}
    assert found == {("Observation", "code-value-concept"): ("code", "value-concept"),
                     ("Observation", "code-value-date"): ("code", "value-date"),
                     ("Observation", "code-value-quantity"): ("code", "value-quantity")}
    assert "code-value-string" in {p.code for p in registry.stored_composites("Observation")}


def test_one_spelling_of_a_path() -> None:
    assert normal_part("value.as(Quantity)", "Observation") == "Observation.value.as(quantity)"
    assert normal_part("(Observation.value as Quantity)", "Observation") == "Observation.value.as(quantity)"
    assert normal_part("code", "Observation") == "Observation.code"
    assert normal_part("Observation", "Observation") == "Observation"
    assert normal_part("(Observation.value as CodeableConcept).text", "Observation") == \
        "(Observation.value as CodeableConcept).text"  # left alone: it equals nothing else
