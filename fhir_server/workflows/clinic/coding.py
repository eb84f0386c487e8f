"""Problems, diagnoses and allergies coded with the terminology service (data/bindings.json).

Each coding of a bound element must come from a code system of its value set that is imported on this
server (ICD-10, ICD-10-CM, SNOMED CT...) and be a member of the value set, answered in process by the
terminology package's value set evaluation (what ValueSet/$validate-code runs). A CodeableConcept with text
and no coding is accepted while none of the value set's code systems is imported (``textOnly``). Refusals are
422 naming the coding, e.g. ``Condition.code.coding[0]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.errors import FhirError
from fhir_server.packages import canonical
from fhir_server.workflows.rules import rule_violation
from terminology import store
from terminology.valueset import members

if TYPE_CHECKING:
    from fhir_server.hooks import WriteEvent
    from fhir_server.storage.repository import Repository

_DATA = Path(__file__).parent / "data"


@lru_cache(maxsize=1)
def bindings() -> dict[str, Any]:
    return dict(json.loads((_DATA / "bindings.json").read_text()))


@lru_cache(maxsize=1)
def packaged_value_sets() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((_DATA / "valuesets").glob("*.json")):
        vs = json.loads(path.read_text())
        out[vs["url"]] = vs
    return out


def value_set(repo: Repository, url: str) -> dict[str, Any]:
    """The bound value set: one stored on this server under the URL (a hospital's own), else the packaged."""
    stored = canonical.find(repo, "ValueSet", url)
    return stored if stored is not None else packaged_value_sets()[url]


def concepts_at(node: Any, steps: list[str], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(FHIRPath with indexes, CodeableConcept) for each value at the dotted element path."""
    if not steps:
        if isinstance(node, dict):
            yield path, node
        return
    value = node.get(steps[0]) if isinstance(node, dict) else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from concepts_at(item, steps[1:], f"{path}.{steps[0]}[{i}]")
    elif value is not None:
        yield from concepts_at(value, steps[1:], f"{path}.{steps[0]}")


def _systems(vs: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(inc["system"] for inc in (vs.get("compose") or {}).get("include") or []
                              if isinstance(inc, dict) and inc.get("system")))


def _imported(repo: Repository, system: str) -> bool:
    cs = store.code_system(repo, system)
    return cs is not None and cs.concept_count > 0  # a content=not-present stub (the core's SNOMED CT) is not


def _only(vs: dict[str, Any], system: str) -> dict[str, Any]:
    """The value set restricted to one system's includes/excludes: the others need not be imported."""
    compose = vs.get("compose") or {}
    part = {k: [i for i in compose.get(k) or [] if isinstance(i, dict) and i.get("system") == system]
            for k in ("include", "exclude")}
    return {**vs, "compose": {k: v for k, v in part.items() if v}}


def check_concept(repo: Repository, vs: dict[str, Any], concept: dict[str, Any], path: str) -> None:
    codings = concept.get("coding")
    systems = _systems(vs)
    if not codings:
        if bindings()["textOnly"] != "always" and any(_imported(repo, s) for s in systems):
            imported = [s for s in systems if _imported(repo, s)]
            raise rule_violation(422, "clinic-code-required", f"a code from {vs['url']} is required: "
                                 f"{', '.join(imported)} is imported on this server", (path,))
        return  # text only: the structure check wants text or a coding
    for i, coding in enumerate(codings):
        where = f"{path}.coding[{i}]"
        system, code = (coding.get("system"), coding.get("code")) if isinstance(coding, dict) else (None, None)
        if not isinstance(system, str) or not isinstance(code, str):
            raise rule_violation(422, "clinic-code-unsupported-system",
                                 f"a coding needs a system and a code from {vs['url']}", (where,))
        if system not in systems:
            raise rule_violation(422, "clinic-code-unsupported-system",
                                 f"{system} is not a code system of {vs['url']} ({', '.join(systems)})", (where,))
        if not _imported(repo, system):
            raise rule_violation(422, "clinic-code-unsupported-system",
                                 f"{system} is not imported on this server: send the text only", (where,))
        try:
            found = members(repo, _only(vs, system), only=(system, code))
        except FhirError as exc:  # the value set cannot be evaluated here (a filter on a missing property...)
            raise rule_violation(422, "clinic-code-unsupported-system",
                                 f"{vs['url']} cannot be evaluated for {system}: {exc.message}", (where,)) from exc
        if not found:
            raise rule_violation(422, "clinic-code-not-in-value-set",
                                 f"{system}#{code} is not in the value set {vs['url']}", (where,))
        if found[0].abstract:
            raise rule_violation(422, "clinic-code-not-in-value-set",
                                 f"{system}#{code} is a grouper, not for use in records", (where,))


def before_validate(event: WriteEvent, repo: Repository | None) -> None:
    resource = event.resource
    if repo is None or not isinstance(resource, dict) or event.interaction not in ("create", "update", "patch"):
        return
    for binding in bindings()["bindings"]:
        if binding["resourceType"] != event.resource_type:
            continue
        vs = None
        for path, concept in concepts_at(resource, binding["element"].split("."), event.resource_type):
            vs = vs or value_set(repo, binding["valueSet"])
            check_concept(repo, vs, concept, path)
