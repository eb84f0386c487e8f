"""SearchParameter checks before a runtime parameter joins the registry."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.definitions import bundle_resources
from fhir_server.errors import FhirError
from fhir_server.search.definition_check import check_fhirpath, check_search_parameter


def sp(**over: Any) -> dict[str, Any]:
    base = {"resourceType": "SearchParameter", "url": "http://example.org/sp/nick", "name": "nick",
            "status": "active", "description": "x", "code": "nickname", "base": ["Patient"], "type": "string",
            "expression": "Patient.name.where(use='nickname').given"}
    return {**base, **over}


def test_every_core_expression_is_valid_fhirpath() -> None:
    for definition in bundle_resources("search-parameters", "SearchParameter"):
        if definition.get("expression"):
            check_fhirpath(definition["expression"])


@pytest.mark.parametrize("expression", ["Patient.name.(", "Patient..name", "Patient.name given",
                                        "Patient.name.where(use=", "Patient.name.where(use=1"])
def test_bad_fhirpath_is_rejected(expression: str) -> None:
    with pytest.raises(ValueError):
        check_fhirpath(expression)


@pytest.mark.parametrize(("over", "element"), [
    ({"expression": "Patient.name.("}, "SearchParameter.expression"),
    ({"expression": None}, "SearchParameter.expression"),
    ({"expression": "Observation.code"}, "SearchParameter.expression"),  # not a path from the base
    ({"base": ["Patient", "NotAType"]}, "SearchParameter.base[1]"),
    ({"type": "bogus"}, "SearchParameter.type"),
    ({"code": "_secret"}, "SearchParameter.code"),
    ({"code": "has space"}, "SearchParameter.code"),
])
def test_invalid_definitions_name_the_element(over: dict[str, Any], element: str) -> None:
    with pytest.raises(FhirError) as err:
        check_search_parameter(sp(**over))
    assert err.value.status == 422
    assert err.value.outcome()["issue"][0]["expression"] == [element]


def test_valid_definitions_pass() -> None:
    check_search_parameter(sp())
    check_search_parameter(sp(base=["Resource"], expression="Resource.meta.source", type="uri", code="src2"))
    check_search_parameter(sp(type="special", expression=None))
