"""AuditEvent for every access (FHIR R4 AuditEvent, IHE BALP style); see service.py for what is written where."""

from fhir_server.audit.service import Auditor, install

__all__ = ["Auditor", "install"]
