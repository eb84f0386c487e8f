"""Who may create an EHR launch context (``POST /auth/launch``), and for which patient.

A launch binds an app's coming sign-in to a chart, so only the EHR side creates one: a user of an EHR-side
role (roles.py ``EHR_LAUNCH_ROLES``: every role but ``patient``) or a backend service granted the ``launch``
scope, and only for a patient (and encounter) it may read itself -- checked by reading them with the
caller's own access, so scopes, roles and compartments apply exactly as for a FHIR read.
"""

from __future__ import annotations

from typing import Any

from fhir_server.auth.access import AccessContext
from fhir_server.auth.roles import EHR_LAUNCH_ROLES
from fhir_server.errors import FORBIDDEN, INVALID, FhirError
from fhir_server.storage.repository import Repository
from fhir_server.storage.uow import UnitOfWork


def check_launch(uow: UnitOfWork, access: AccessContext, context: dict[str, Any]) -> None:
    """Raise FhirError (403 not permitted, 404/410 unknown patient or encounter, 400 an encounter of another
    patient) unless ``access`` may create a launch for ``context`` (``patient``, optional ``encounter``)."""
    if access.role is None:
        if "launch" not in access.other_scopes:
            raise FhirError(403, FORBIDDEN, "A backend service needs the 'launch' scope to create launch contexts")
    elif access.role not in EHR_LAUNCH_ROLES:
        raise FhirError(403, FORBIDDEN, f"Users of role '{access.role}' do not create launch contexts")

    def read(repo: Repository) -> None:
        repo.read("Patient", context["patient"])  # 403 / 404 / 410 as for the caller's own read
        if "encounter" in context:
            encounter = repo.read("Encounter", context["encounter"]).content or {}
            subject = (encounter.get("subject") or {}).get("reference")
            if not isinstance(subject, str) or not f"/{subject}".endswith(f"/Patient/{context['patient']}"):
                raise FhirError(400, INVALID, "The encounter is not one of this patient's", ("encounter",))

    uow.run(read, write=False, access=access)
