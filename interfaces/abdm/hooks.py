"""ABDM's hooks on the write path: ABHA identifiers on a Patient are checked before validation (400 naming
the identifier), whoever writes the Patient."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.storage.repository import Repository
from interfaces.abdm.identity import check_patient_identifiers

if TYPE_CHECKING:
    from interfaces.abdm.service import Abdm


def abha_identifiers(event: WriteEvent, repo: Repository | None) -> None:
    if event.resource_type == "Patient" and event.resource is not None:
        check_patient_identifiers(event.resource)


def install_hooks(abdm: Abdm) -> None:
    abdm.server.hooks.register(HookPoint.BEFORE_VALIDATE, abha_identifiers)
    if abdm.settings.hip_id:  # each new visit of a patient with an ABHA is linked to it (hip_linking.py)
        from interfaces.abdm.hip_linking import visit_hook

        abdm.server.hooks.register(HookPoint.BEFORE_COMMIT, visit_hook(abdm))
