"""Acting as the system: full access, always an explicit, greppable choice at its call site.

Every entry point runs with the caller's access (``fhir_server.auth.access.AccessContext``). Where the server
itself must act beyond any caller (migrations, core definition loads, the HL7 v2 listener's own bookkeeping,
a job's infrastructure rows), the call site says ``as_system("why")``; the reason shows in logs and audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fhir_server.storage.repository import Version


@dataclass(frozen=True)
class SystemAccess:
    """The access policy of the server acting for itself: everything is permitted."""

    reason: str
    subject: str | None = None  # no token holder: owns nothing a caller could claim

    def can_read(self, version: Version) -> bool:
        return True

    def can_search(self, version: Version) -> bool:
        return True

    def check_read(self, version: Version) -> None:
        return None

    def check_write(self, resource_type: str, content: dict[str, Any] | None, previous: Version | None) -> None:
        return None

    def search_compartment(self, resource_type: str) -> tuple[str, tuple[str, ...]] | None:
        return None

    def search_constraints(self, resource_type: str) -> tuple[tuple[tuple[str, str], ...], ...] | None:
        return None

    def masks(self, resource_type: str) -> tuple[str, ...]:
        return ()

    def mask(self, version: Version) -> Version:
        return version

    def restore_masked(self, resource_type: str, content: dict[str, Any], previous: Version | None) -> dict[str, Any]:
        return content

    def may(self, resource_type: str, letter: str) -> bool:
        return True

    def administers(self) -> bool:
        return True


def as_system(reason: str) -> SystemAccess:
    """Full access for ``reason`` (a short phrase: "HL7 v2 message bookkeeping"). Grep for this to audit
    every place the server acts beyond its caller."""
    if not reason.strip():
        raise ValueError("acting as the system needs a reason")
    return SystemAccess(reason)
