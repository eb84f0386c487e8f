"""Profile validation for one request: definitions from the core, the bundled core extensions and
profiles, and the store; bindings through the terminology service.

Compiled profiles are cached in process by (url, version, stored versionId) — the canonical lookup
(``fhir_server.packages.canonical``) tells which stored version is current, so an updated profile is
recompiled and never served stale. Lookups are memoised for the length of one validation.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fhir_server.definitions import bundle_resources, resource_structure_definitions, type_structure_definitions
from fhir_server.errors import FhirError, Issue
from fhir_server.packages import canonical
from fhir_server.validation.matching import core_type
from fhir_server.validation.profile import ElementDef, Profile, compile_profile, core_elements
from fhir_server.validation.tree import required_codes
from fhir_server.validation.walker import Item, Walker

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

_lock = threading.RLock()
_core: dict[str, Profile | None] = {}
_core_elements: dict[str, dict[str, ElementDef]] = {}
_compiled: dict[tuple[str, str, str], Profile] = {}
_MAX_COMPILED = 2000


@lru_cache(maxsize=1)
def bundled() -> dict[str, dict[str, Any]]:
    """Core extension definitions and the core's profiles by URL: profiles-others' and the constraints
    R4 ships among its resource definitions (vitalsigns, bp, heartrate, bmi..., cholesterol)."""
    out: dict[str, dict[str, Any]] = {}
    for name in ("extension-definitions", "profiles-others", "profiles-resources"):
        for sd in bundle_resources(name, "StructureDefinition"):
            if name == "profiles-resources" and sd.get("derivation") != "constraint":
                continue  # the resource types themselves are core_profile()'s
            if sd.get("url") and sd.get("snapshot"):
                out[sd["url"]] = sd
    return out


def core_profile(type_name: str) -> Profile | None:
    if type_name in _core:
        return _core[type_name]
    sd = resource_structure_definitions().get(type_name) or type_structure_definitions().get(type_name)
    with _lock:
        if type_name not in _core:
            _core[type_name] = compile_profile(sd) if sd is not None and sd.get("snapshot") else None
    return _core[type_name]


def _core_by_path(type_name: str) -> dict[str, ElementDef] | None:
    if type_name not in _core_elements:
        sd = resource_structure_definitions().get(type_name) or type_structure_definitions().get(type_name)
        if sd is None:
            return None
        _core_elements[type_name] = core_elements(sd)
    return _core_elements[type_name]


def compiled(sd: dict[str, Any], stamp: str = "") -> Profile | None:
    """``sd`` compiled (None without a snapshot), cached by (url, version, stamp)."""
    key = (str(sd.get("url")), str(sd.get("version") or ""), stamp)
    found = _compiled.get(key)
    if found is not None:
        return found
    if not (sd.get("snapshot") or {}).get("element"):
        return None
    with _lock:
        found = _compiled.get(key)
        if found is None:
            found = compile_profile(sd, _core_by_path(str(sd.get("type"))))
            if len(_compiled) >= _MAX_COMPILED:  # old versions of updated profiles: start afresh
                _compiled.clear()
            _compiled[key] = found
    return found


class StoreDefinitions:
    """The walker's lookups for one validation, reading through ``repo`` (None: core definitions only)."""

    def __init__(self, repo: Repository | None) -> None:
        self.repo = repo
        self._profiles: dict[str, Profile | None] = {}
        self._codes: dict[tuple[str, tuple[tuple[str | None, str], ...]], bool | str] = {}
        self._value_sets: dict[str, dict[str, Any] | None] = {}

    def core(self, type_name: str) -> Profile | None:
        return core_profile(type_name)

    def profile(self, url: str) -> Profile | None:
        if url in self._profiles:
            return self._profiles[url]
        found: Profile | None = None
        name = core_type(url)
        if name is not None:
            found = core_profile(name)
        elif url in bundled():
            found = compiled(bundled()[url], "core")
        elif self.repo is not None:
            sd = canonical.find(self.repo, "StructureDefinition", url)
            if sd is not None:
                meta = sd.get("meta") or {}
                found = compiled(sd, f"{meta.get('versionId')}@{meta.get('lastUpdated')}")
        self._profiles[url] = found
        return found

    def value_set(self, url: str) -> dict[str, Any] | None:
        if url not in self._value_sets:
            self._value_sets[url] = None if self.repo is None else canonical.find(self.repo, "ValueSet", url)
        return self._value_sets[url]

    def codes_in(self, value_set: str, codes: list[tuple[str | None, str]]) -> bool | str:
        """Whether any of the codes is in the value set; a string says why that cannot be told."""
        key = (value_set, tuple(codes))
        if key in self._codes:
            return self._codes[key]
        from terminology.valueset import members

        closed = required_codes().get(value_set)
        vs = None if closed is not None else self.value_set(value_set)
        result: bool | str = f"the value set {value_set} is not known to this server"
        if closed is not None:  # a core code list (the structure check's), no database needed
            result = any(code in closed for _, code in codes)
        elif vs is not None and self.repo is not None:
            try:
                result = any(members(self.repo, vs, only=(system, code)) for system, code in codes)
            except FhirError as exc:  # a code system this server lacks (SNOMED CT not imported...): cannot tell
                result = f"the value set {value_set} cannot be evaluated here ({exc.message})"
        self._codes[key] = result
        return result


def validate_profiles(repo: Repository | None, resource: dict[str, Any], profiles: list[str], *,
                      unknown_profile: str = "error", requested: list[str] | None = None) -> list[Issue]:
    """Base-definition checks beyond structure (invariants, references, extensions, nested resources) and
    each of ``profiles`` (``unknown_profile``: the severity for one this server does not have) and of
    ``requested`` (unknown: an error)."""
    walker = Walker(StoreDefinitions(repo), unknown_profile_severity=unknown_profile)
    rtype = str(resource.get("resourceType"))
    walker.resource(resource, rtype, profiles)
    for url in requested or []:
        walker.against(url, Item(resource, rtype, rtype), resource, "error")
    return walker.out


def declared_profiles(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return []
    return [p for p in meta.get("profile") or [] if isinstance(p, str)]
