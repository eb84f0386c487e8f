"""What several terminology operations share: finding the CodeSystem and the codings they are asked about."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fhir_server.errors import INVALID, NOT_FOUND, REQUIRED, FhirError
from fhir_server.rest.request import FhirResponse
from terminology import store
from terminology.params import OperationInput, parameters, value
from terminology.store import CodeSystemRef

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository


def code_system_for(repo: Repository, inp: OperationInput, resource_id: str | None, system: str | None,
                    *, system_param: str = "system") -> CodeSystemRef:
    """The CodeSystem an operation works on: the instance, else the one whose url is ``system``."""
    if resource_id is not None:
        repo.read("CodeSystem", resource_id)  # 404 / 410 / access as for a read
        cs = store.code_system_by_id(repo, resource_id)
        if cs is None:
            raise FhirError(422, NOT_FOUND, f"CodeSystem/{resource_id} has no concepts to look up", ("CodeSystem",))
        return cs
    if not system:
        raise FhirError(400, REQUIRED, f"The parameter {system_param} is required", (system_param,))
    cs = store.code_system(repo, system, inp.string("version"))
    if cs is None:
        raise FhirError(404, NOT_FOUND, f"The code system {system} is not known to this server", (system_param,))
    return cs


def coding_input(inp: OperationInput, *, code: str = "code", system: str = "system", coding: str = "coding",
                 required: bool = True) -> dict[str, Any] | None:
    """code + system, or a Coding: as {system, code, display, version}."""
    found = inp.coding(coding)
    if found is not None:
        if not found.get("code"):
            raise FhirError(400, REQUIRED, f"The parameter {coding} has no code", (coding,))
        return found
    value = inp.string(code)
    if value:
        return {"system": inp.string(system), "code": value, "display": inp.string("display"),
                "version": inp.string("version")}
    if required:
        raise FhirError(400, REQUIRED, f"The parameter {code} or {coding} is required", (code,))
    return None


def codings_input(inp: OperationInput) -> list[dict[str, Any]]:
    """What $validate-code checks: code (+system), coding or codeableConcept, as a list of codings."""
    single = coding_input(inp, required=False)
    if single is not None:
        return [single]
    cc = inp.codeable_concept("codeableConcept")
    if cc is not None:
        codings = [c for c in cc.get("coding") or [] if isinstance(c, dict) and c.get("code")]
        if not codings:
            raise FhirError(400, INVALID, "The codeableConcept has no coding with a code", ("codeableConcept",))
        return codings
    raise FhirError(400, REQUIRED, "One of code, coding or codeableConcept is required", ("code",))


def code_found(coding: dict[str, Any], display: str | None,
               designations: Sequence[dict[str, Any]]) -> FhirResponse:
    """$validate-code's answer for a code that exists: valid unless the caller's display is none of the
    concept's display and designations (both CodeSystem and ValueSet $validate-code say so)."""
    shown = coding.get("display")
    if shown and display and shown != display and shown not in {d.get("value") for d in designations}:
        return parameters(value("result", "Boolean", False),
                          value("message", "String", f"The display {shown!r} is not valid for the code "
                                                     f"{coding['code']}; expected {display!r}"),
                          value("display", "String", display))
    return parameters(value("result", "Boolean", True), value("display", "String", display))
