"""Validation of incoming resources as FHIR R4."""

from fhir_server.validation.resource import ResourceValidator, validate_resource

__all__ = ["ResourceValidator", "validate_resource"]
