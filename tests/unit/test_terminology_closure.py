"""The is-a closure and concept flattening of terminology/sync.py, and the $expand text filter."""

from __future__ import annotations

from terminology.sync import closure, flatten
from terminology.valueset import Member, text_filter


def test_closure_is_transitive_reflexive_and_survives_cycles() -> None:
    parents = {"a": [], "b": ["a"], "c": ["b"], "d": ["b", "a"], "x": ["y"], "y": ["x"]}
    pairs = closure(parents)
    assert {("a", "a"), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "d"), ("b", "d")} <= pairs
    assert ("c", "a") not in pairs and ("c", "d") not in pairs
    assert {("y", "x"), ("x", "x"), ("y", "y")} <= pairs  # a cycle ends; which way round is not defined


def test_closure_ignores_unknown_parents() -> None:
    assert closure({"a": ["ghost"]}) == {("a", "a")}


def test_flatten_nested_concepts_keeps_order_and_parent() -> None:
    concepts = [{"code": "a", "concept": [{"code": "b", "concept": [{"code": "c"}]}, {"display": "no code"}]},
                {"code": "d"}]
    assert [(c["code"], p) for c, p in flatten(concepts)] == [("a", None), ("b", "a"), ("c", "b"), ("d", None)]


def test_text_filter_matches_word_prefixes_or_code_prefix() -> None:
    items = [Member("s", "8480-6", "Systolic blood pressure"), Member("s", "8462-4", "Diastolic blood pressure"),
             Member("s", "2339-0", "Glucose [Mass/volume] in Blood")]
    assert [m.code for m in text_filter(items, "blood press")] == ["8480-6", "8462-4"]
    assert [m.code for m in text_filter(items, "SYST")] == ["8480-6"]
    assert [m.code for m in text_filter(items, "8462")] == ["8462-4"]
    assert [m.code for m in text_filter(items, "gluc mass")] == ["2339-0"]
    assert text_filter(items, "  ") == items
