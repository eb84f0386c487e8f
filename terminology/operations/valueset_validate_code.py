"""ValueSet/$validate-code (http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fhir_server.rest.request import FhirRequest, FhirResponse
from terminology.cache import cache_of
from terminology.operations.common import code_found, codings_input
from terminology.operations.expand import keyed_value_set
from terminology.params import OperationInput, parameters, value
from terminology.valueset import Member, members, whole

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

DEFINITION = "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code"


def validate_code(req: FhirRequest, repo: Repository, resource_type: str | None,
                  resource_id: str | None) -> FhirResponse:
    inp = OperationInput.of(req)
    codings = codings_input(inp)
    vs, key = keyed_value_set(repo, inp, resource_id)
    name = vs.get("url") or f"ValueSet/{resource_id}"
    messages = []
    cache = cache_of(repo)
    for coding in codings:
        only = (coding.get("system") or None, coding["code"])
        if key is None:  # a ValueSet given in the request: nothing to cache it by
            found: Sequence[Member] = members(repo, vs, only=only)
        elif (expanded := cache.whole(repo, key, lambda: whole(repo, vs))) is not None:
            found = expanded.lookup(*only)
        else:  # too big to hold whole: the answer for this one code
            found = cache.members(repo, key, *only, lambda only=only: members(repo, vs, only=only))  # type: ignore[misc]
        if not found:
            where = f"{coding['system']}#" if coding.get("system") else ""
            messages.append(f"The code {where}{coding['code']} is not in the value set {name}")
            continue
        member = found[0]
        if member.abstract and inp.string("abstract") == "false":
            messages.append(f"The code {coding['code']} is abstract (not selectable)")
            continue
        return code_found(coding, member.display, member.designations)
    return parameters(value("result", "Boolean", False), value("message", "String", "; ".join(messages)))
