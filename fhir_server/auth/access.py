"""The access context a token carries into the per-request repository (``Repository.access``).

A permission holds for (resource type, letter, resource) when some granted scope covers the type, has the
letter and its ``?`` constraints match the resource, when the user's role allows it (roles.py), and when a
``patient/`` scope (or a patient user) is used, when the resource is in that patient's compartment.
The letters follow SMART App Launch 2.x: ``r`` is read, vread and instance history (``can_read``); ``s`` is
type and system search, type and system history (``can_search``), and also what a search returns: its matches
and its ``_include``/``_revinclude`` resources. So ``.r`` alone reads by id but cannot search, ``.s`` alone
searches but cannot read by id. Writes need ``c``, ``u`` or ``d``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fhir_server.auth.compartment import in_patient_compartment, patient_compartment_params
from fhir_server.auth.masks import mask_content, restore_masked, role_masks
from fhir_server.auth.roles import role_allows
from fhir_server.auth.scopes import ResourceScope
from fhir_server.errors import FORBIDDEN, FhirError
from fhir_server.storage.repository import Version


@dataclass(frozen=True)
class AccessContext:
    scopes: tuple[ResourceScope, ...]
    role: str | None = None  # None: a backend client acting for itself (system/ scopes)
    patient: str | None = None  # launch context patient id (patient/ scopes)
    fhir_user: str | None = None  # Practitioner/1, Patient/7
    # Who holds the token ("<client_id> <sub>"): owners of what a caller leaves behind (bulk data jobs).
    subject: str | None = None
    # Granted scopes that name no resources (``launch``, ``openid``, ...): a backend's launch permission.
    other_scopes: tuple[str, ...] = ()

    @property
    def own_patient(self) -> str | None:
        """A patient user only ever sees their own compartment, whatever the scopes say."""
        if self.role == "patient" and self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.split("/", 1)[1]
        return None

    def _allowed(self, resource_type: str, letters: str, content: dict[str, Any] | None) -> bool:
        if self.role is not None and not any(role_allows(self.role, resource_type, c) for c in letters):
            return False
        own = self.own_patient
        if self.role == "patient" and (own is None or content is None
                                       or not in_patient_compartment(resource_type, content, own)):
            return False
        for scope in self.scopes:
            if not scope.covers_type(resource_type) or not any(c in scope.permissions for c in letters):
                continue
            if self.role is not None and not any(role_allows(self.role, resource_type, c)
                                                 for c in letters if c in scope.permissions):
                continue
            if scope.constraints and (content is None or not _matches(scope, content)):
                continue
            if scope.context == "patient" and (self.patient is None or content is None
                                               or not in_patient_compartment(resource_type, content, self.patient)):
                continue
            return True
        return False

    def search_compartment(self, resource_type: str) -> tuple[str, tuple[str, ...]] | None:
        """For search to filter in SQL instead of after paging: ``(patient id, reference parameters)`` when
        every way this token may search ``resource_type`` requires that patient's compartment (no parameters:
        nothing is searchable); None when some grant searches beyond one compartment. For ``Patient`` the
        patient's own ``_id`` belongs too. ``can_search`` still decides per resource (constraints, roles); this
        only narrows what the query fetches (and makes ``_total`` and page sizes right). A patient user is
        held to the scopes first (issue 12 point 7): ``patient/Observation.rs`` searches no Conditions, not
        even the patient's own."""
        if self.role is not None and not role_allows(self.role, resource_type, "s"):
            return ("", ())  # the role never searches this type, whatever the scopes
        readers = [s for s in self.scopes if s.covers_type(resource_type) and "s" in s.permissions]
        if not readers:
            return ("", ())
        own = self.own_patient
        if own is not None or self.role == "patient":
            return (own or "", patient_compartment_params().get(resource_type, ()) if own else ())
        if any(s.context != "patient" for s in readers):
            return None
        if self.patient is None:
            return ("", ())
        return (self.patient, patient_compartment_params().get(resource_type, ()))

    def search_constraints(self, resource_type: str) -> tuple[tuple[tuple[str, str], ...], ...] | None:
        """The v2 granular constraints of the scopes that search ``resource_type``, for search to filter on in
        SQL (one set per scope, any may match); None when some reading scope has none. ``can_read`` still
        checks each resource; this makes pages full and ``_total`` count only what may be read."""
        readers = [s for s in self.scopes if s.covers_type(resource_type) and "s" in s.permissions]
        if not readers or any(not s.constraints for s in readers):
            return None
        return tuple(dict.fromkeys(s.constraints for s in readers))

    def can_read(self, version: Version) -> bool:
        """``r``: read, vread, instance history."""
        return self._allowed(version.resource_type, "r", version.content)

    def can_search(self, version: Version) -> bool:
        """``s``: a search's matches and includes, type and system history."""
        return self._allowed(version.resource_type, "s", version.content)

    def check_read(self, version: Version) -> None:
        if not self.can_read(version):
            raise FhirError(403, FORBIDDEN, f"The access token does not permit reading {version.reference}",
                            (version.resource_type,))

    def check_write(self, resource_type: str, content: dict[str, Any] | None, previous: Version | None) -> None:
        """Create (no previous), update (both) or delete (no content): the old and the new must both be
        within the grant, so a patient-scoped write can neither take a resource out of the compartment
        nor bring one in from another patient."""
        if previous is None or previous.content is None:
            letter, subjects = "c", [content]
        elif content is None:
            letter, subjects = "d", [previous.content]
        else:
            letter, subjects = "u", [previous.content, content]
        action = {"c": "create", "u": "update", "d": "delete"}[letter]
        for subject in subjects:
            if not self._allowed(resource_type, letter, subject):
                raise FhirError(403, FORBIDDEN, f"The access token does not permit {action} of {resource_type}",
                                (resource_type,))

    # --- role-level element masks (masks.py) and administration ---------------------------------------------

    def masks(self, resource_type: str) -> tuple[str, ...]:
        """The elements of ``resource_type`` this user's role never sees (none for backends)."""
        return role_masks(self.role, resource_type)

    def mask(self, version: Version) -> Version:
        """The version as this token may see it: the role's masked elements taken out (SUBSETTED label)."""
        specs = self.masks(version.resource_type)
        if not specs or version.content is None:
            return version
        return replace(version, content=mask_content(version.content, specs))

    def restore_masked(self, resource_type: str, content: dict[str, Any], previous: Version | None) -> dict[str, Any]:
        """What to store for a write of ``content``: 403 if it sets an element the role cannot see; an update
        keeps the stored values of those elements (writing back a masked read erases nothing)."""
        specs = self.masks(resource_type)
        if not specs:
            return content
        return restore_masked(resource_type, content, previous.content if previous is not None else None, specs)

    def may(self, resource_type: str, letter: str) -> bool:
        """Whether some grant could permit ``letter`` (c r u d s) on some resource of this type: the role
        allows it and a scope covering the type carries it (constraints and compartments are per resource)."""
        if self.role is not None and not role_allows(self.role, resource_type, letter):
            return False
        return any(s.covers_type(resource_type) and letter in s.permissions for s in self.scopes)

    def administers(self) -> bool:
        """An administrator: an ``admin`` user, or a backend granted writes on every type (``system/*.write``,
        ``system/*.cud``). Needed for $reindex, $import and the /admin endpoints."""
        if self.role is not None:
            return self.role == "admin"
        return any(s.context == "system" and s.resource_type == "*" and not s.constraints
                   and all(c in s.permissions for c in "cud") for s in self.scopes)


def _codings(value: Any) -> list[tuple[str | None, str | None]]:
    out: list[tuple[str | None, str | None]] = []
    for concept in value if isinstance(value, list) else [value]:
        if isinstance(concept, dict):
            out.extend((c.get("system"), c.get("code")) for c in concept.get("coding", []) if isinstance(c, dict))
    return out


def _matches(scope: ResourceScope, content: dict[str, Any]) -> bool:
    """v2 granular constraints; only token parameters on a top-level CodeableConcept of the same name are
    understood (``category``, ``code``, ``status``); any other constraint matches nothing (fail closed)."""
    for name, wanted in scope.constraints:
        value = content.get(name)
        if isinstance(value, str):
            if value not in wanted.split(","):
                return False
            continue
        codings = _codings(value)
        ok = False
        for alt in wanted.split(","):
            system, bar, code = alt.rpartition("|")
            ok = ok or any(c == code and (not bar or s == system) for s, c in codings)
        if not ok:
            return False
    return True
