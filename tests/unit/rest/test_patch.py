"""FHIR's own JSON Patch test cases (hl7 fhir-test-cases, patch/json-patch-tests.json) on the patch engine."""

from __future__ import annotations

import json
import os

import pytest

from fhir_server.errors import FhirError
from fhir_server.rest.patch import apply_json_patch

CASES = os.path.join(os.path.dirname(__file__), "../../../../shared/test-cases/patch/json-patch-tests.json")


def _cases() -> list[dict]:  # type: ignore[type-arg]
    if not os.path.exists(CASES):
        return []
    with open(CASES) as fh:
        return list(json.load(fh))


cases = _cases()


@pytest.mark.skipif(not cases, reason="shared/test-cases is not beside the checkout")
@pytest.mark.parametrize("case", cases, ids=[c["comment"][:40] for c in cases])
def test_json_patch_case(case: dict) -> None:  # type: ignore[type-arg]
    if "error" in case:
        with pytest.raises(FhirError) as err:
            apply_json_patch(case["doc"], case["patch"])
        assert err.value.status in (400, 422)
    else:
        assert apply_json_patch(case["doc"], case["patch"]) == case["expected"]


def test_document_is_not_modified_in_place() -> None:
    doc = {"a": [1]}
    apply_json_patch(doc, [{"op": "add", "path": "/a/-", "value": 2}])
    assert doc == {"a": [1]}


def test_malformed_patch_is_400() -> None:
    with pytest.raises(FhirError) as err:
        apply_json_patch({}, [{"op": "jump", "path": "/a"}])
    assert err.value.status == 400
