"""FhirError: the only way errors leave the FHIR core, always as an OperationOutcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# OperationOutcome.issue.code values we use (http://hl7.org/fhir/R4/valueset-issue-type.html).
INVALID = "invalid"
STRUCTURE = "structure"
REQUIRED = "required"
VALUE = "value"
NOT_FOUND = "not-found"
DELETED = "deleted"
CONFLICT = "conflict"
DUPLICATE = "duplicate"
NOT_SUPPORTED = "not-supported"
PROCESSING = "processing"
EXCEPTION = "exception"
SECURITY = "security"
FORBIDDEN = "forbidden"
TRANSIENT = "transient"
TOO_COSTLY = "too-costly"
INFORMATIONAL = "informational"
BUSINESS_RULE = "business-rule"


@dataclass(frozen=True)
class Issue:
    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()
    details: dict[str, Any] | None = None  # a CodeableConcept: a stable code for the rule at fault

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.details is not None:
            out["details"] = self.details
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: list[Issue] | tuple[Issue, ...]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def informational(text: str) -> dict[str, Any]:
    return operation_outcome([Issue(INFORMATIONAL, text, severity="information")])


@dataclass
class FhirError(Exception):
    """An error with an HTTP status and the OperationOutcome issues that explain it."""

    status: int
    issues: list[Issue] = field(default_factory=list)

    def __init__(self, status: int, code: str | list[Issue], diagnostics: str = "",
                 expression: tuple[str, ...] | list[str] = (), *, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}  # sent with the OperationOutcome (e.g. a 503's Retry-After)
        if isinstance(code, list):
            self.issues = code
        else:
            self.issues = [Issue(code, diagnostics, expression=tuple(expression))]
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, NOT_FOUND, f"Resource {resource_type}/{resource_id} is not known")


def bad_request(diagnostics: str, expression: tuple[str, ...] = (), code: str = INVALID) -> FhirError:
    return FhirError(400, code, diagnostics, expression)
