"""The consultation (issue 17, items 8-10): vital signs, clinical notes, coded problems and allergies.

- vitals.py / bmi.py: vital-sign Observations conform to the FHIR R4 vital-signs profiles, implausible
  values are refused, ``interpretation`` is set, a BMI is derived from a same-day height and weight.
- notes.py: a signed Composition (or DocumentReference) is immutable; amendments are new resources with
  ``relatesTo`` and a Provenance; an unsigned note can be edited for a configurable time only.
- coding.py: Condition and AllergyIntolerance codes are validated against their bound value sets with the
  terminology service, in process.

Rule codes and the FHIR calls an app makes: docs/workflows/clinic.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint
from fhir_server.workflows.clinic import bmi, coding, notes, vitals

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


def install(server: FhirServer) -> None:
    hooks = server.hooks
    hooks.register(HookPoint.BEFORE_VALIDATE, vitals.before_validate)
    hooks.register(HookPoint.BEFORE_COMMIT, vitals.before_commit)
    hooks.register(HookPoint.BEFORE_COMMIT, bmi.on_write)
    hooks.register(HookPoint.BEFORE_VALIDATE, coding.before_validate)
    notes.NoteRules(server.settings).register(hooks)
