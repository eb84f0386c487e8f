"""JSON Patch (RFC 6902) as the PATCH interaction applies it (http.html#patch)."""

from __future__ import annotations

from typing import Any

import jsonpatch

from fhir_server.errors import INVALID, PROCESSING, FhirError


def apply_json_patch(document: dict[str, Any], operations: Any) -> Any:
    """The patched copy of ``document``; FhirError 400 for a malformed patch, 422 when it cannot apply."""
    if not isinstance(operations, list):
        raise FhirError(400, INVALID, "A JSON Patch document is an array of operations")
    try:
        patch = jsonpatch.JsonPatch(operations)
    except (jsonpatch.InvalidJsonPatch, TypeError, AttributeError) as exc:
        raise FhirError(400, INVALID, f"Invalid JSON Patch: {exc}") from exc
    try:
        return patch.apply(document)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, IndexError,
            ValueError) as exc:
        raise FhirError(422, PROCESSING, f"The JSON Patch could not be applied: {exc}") from exc
