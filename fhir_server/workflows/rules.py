"""A hospital rule's refusal: 409/422 OperationOutcome whose ``issue.details`` carries the rule's stable code."""

from __future__ import annotations

from fhir_server.errors import BUSINESS_RULE, FhirError, Issue

# The code system of our rule codes (each area documents its codes in docs/workflows.md).
RULE_SYSTEM = "https://fhir-server.dev/CodeSystem/hospital-rule"


def rule_issue(rule: str, diagnostics: str, expression: tuple[str, ...] | list[str] = (),
               *, code: str = BUSINESS_RULE, severity: str = "error") -> Issue:
    return Issue(code, diagnostics, severity=severity, expression=tuple(expression),
                 details={"coding": [{"system": RULE_SYSTEM, "code": rule}], "text": diagnostics})


def rule_violation(status: int, rule: str, diagnostics: str,
                   expression: tuple[str, ...] | list[str] = (), *, code: str = BUSINESS_RULE) -> FhirError:
    """``status``: 409 for a conflict with the server's state (a slot already taken, a bed occupied), 422 for
    content that breaks a rule on its own (a systolic below its diastolic). ``expression``: the FHIRPath of
    the element at fault, e.g. ``Observation.component[0].valueQuantity``."""
    return FhirError(status, [rule_issue(rule, diagnostics, expression, code=code)])
