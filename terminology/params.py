"""Operation input: query parameters (GET) or a Parameters resource (POST), read the same way.

Errors name the parameter at fault in ``OperationOutcome.issue.expression``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.errors import INVALID, REQUIRED, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse

_VALUE_KEYS = ("valueString", "valueUri", "valueCode", "valueCanonical", "valueUrl", "valueBoolean",
               "valueInteger", "valueDateTime", "valueDate", "valueId")


@dataclass
class OperationInput:
    params: list[dict[str, Any]]  # Parameters.parameter entries (GET values become valueString)

    @classmethod
    def of(cls, req: FhirRequest) -> OperationInput:
        if req.method == "POST" and (req.body or req.resource is not None):
            body = req.json_body()
            if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
                raise FhirError(400, INVALID, "The body of an operation must be a Parameters resource",
                                ("Parameters",))
            params = [p for p in body.get("parameter") or [] if isinstance(p, dict)]
        else:
            params = []
        params += [{"name": k, "valueString": v} for k, v in req.query if not k.startswith("_")]
        return cls(params)

    def _all(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.params if p.get("name") == name]

    def string(self, name: str) -> str | None:
        for p in self._all(name):
            for key in _VALUE_KEYS:
                if key in p:
                    return str(p[key]).lower() if isinstance(p[key], bool) else str(p[key])
        return None

    def strings(self, name: str) -> list[str]:
        return [str(p[k]) for p in self._all(name) for k in _VALUE_KEYS if k in p]

    def required(self, name: str, expression: str) -> str:
        value = self.string(name)
        if not value:
            raise FhirError(400, REQUIRED, f"The parameter {name} is required", (expression,))
        return value

    def boolean(self, name: str) -> bool:
        value = self.string(name)
        if value is None:
            return False
        if value not in ("true", "false"):
            raise FhirError(400, INVALID, f"The parameter {name} must be true or false", (name,))
        return value == "true"

    def integer(self, name: str) -> int | None:
        value = self.string(name)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0:
            raise FhirError(400, INVALID, f"The parameter {name} must be a non-negative integer", (name,))
        return number

    def coding(self, name: str) -> dict[str, Any] | None:
        """A Coding parameter; in a query it is written ``system|code``."""
        for p in self._all(name):
            if isinstance(p.get("valueCoding"), dict):
                return dict(p["valueCoding"])
            if "valueString" in p:
                system, sep, code = str(p["valueString"]).rpartition("|")
                return {"system": system, "code": code} if sep else {"code": code}
        return None

    def codeable_concept(self, name: str) -> dict[str, Any] | None:
        for p in self._all(name):
            if isinstance(p.get("valueCodeableConcept"), dict):
                return dict(p["valueCodeableConcept"])
            if "valueString" in p:
                raise FhirError(400, INVALID, f"The parameter {name} can only be given in a Parameters resource",
                                (name,))
        return None

    def resource(self, name: str) -> dict[str, Any] | None:
        for p in self._all(name):
            if isinstance(p.get("resource"), dict):
                return dict(p["resource"])
        return None


def parameters(*parts: dict[str, Any] | None) -> FhirResponse:
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": [p for p in parts if p]})


def value(name: str, kind: str, val: Any) -> dict[str, Any] | None:
    """One output parameter, or None when there is no value (left out of the output)."""
    if val is None or val == "":
        return None
    return {"name": name, f"value{kind}": val}
