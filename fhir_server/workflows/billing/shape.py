"""Rules read the content before it is validated (BEFORE_VALIDATE): malformed content is told as validation does.

A hook that trips over content of the wrong shape (a ``lineItem`` that is a string, an ``amount`` that is a
list) asks the validator: content that breaks the StructureDefinition is refused with its 400 and the
element at fault, as without the rule. Content the validator accepts re-raises: a bug shows, never a rule
silently skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from fhir_server.errors import FhirError
from fhir_server.hooks import WriteEvent
from fhir_server.storage.repository import Repository

Hook = Callable[[WriteEvent, Repository | None], None]


def shape_checked(hook: Hook) -> Hook:
    @wraps(hook)
    def run(event: WriteEvent, repo: Repository | None) -> None:
        try:
            hook(event, repo)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError):
            if repo is not None and isinstance(event.resource, dict):
                issues = repo.validator.validate(event.resource, event.resource_type)
                if issues:
                    raise FhirError(400, issues) from None
            raise
    return run
