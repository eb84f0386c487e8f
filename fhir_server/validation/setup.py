"""Wires profile validation into a FhirServer: $validate, the canonical URL table, validate-on-write and
the CapabilityStatement's supportedProfile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fhir_server.packages import canonical
from fhir_server.storage.access import as_system
from fhir_server.validation import operation
from fhir_server.validation.on_write import ProfileOnWrite

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository


def register(server: FhirServer) -> None:
    operation.register(server)
    canonical.register(server.hooks)
    if server.settings.validate_profiles:
        ProfileOnWrite(server.settings.validate_profiles_strict).register(server.hooks)


def supported_profiles(repo: Repository) -> dict[str, list[str]]:
    """Resource type -> URLs of the stored resource profiles (StructureDefinitions constraining a type)."""
    with repo.acting_as(as_system("CapabilityStatement.supportedProfile: the server describes itself")):
        return _profiles(repo)


def profiles_fingerprint(repo: Repository) -> tuple[tuple[str, str, int], ...]:
    """What the supported profiles depend on, in one indexed query: every stored StructureDefinition's
    (url, id, version). The CapabilityStatement is rebuilt (and serialised) only when this changes."""
    with repo.acting_as(as_system("CapabilityStatement.supportedProfile: the server describes itself")):
        c = canonical.CANONICAL.c
        rows = repo.execute(select(c.url, c.resource_id, c.version_id).where(
            c.resource_type == "StructureDefinition").order_by(c.url, c.resource_id)).all()
    return tuple((r.url, r.resource_id, r.version_id) for r in rows)


def _profiles(repo: Repository) -> dict[str, list[str]]:
    rows = repo.execute(select(canonical.CANONICAL.c.url).where(
        canonical.CANONICAL.c.resource_type == "StructureDefinition").order_by(canonical.CANONICAL.c.url)).all()
    out: dict[str, list[str]] = {}
    for row in rows:
        sd: dict[str, Any] | None = canonical.find(repo, "StructureDefinition", row.url)
        if sd and sd.get("kind") == "resource" and sd.get("derivation") == "constraint" and sd.get("type"):
            urls = out.setdefault(str(sd["type"]), [])
            if row.url not in urls:
                urls.append(row.url)
    return out


def with_profiles(statement: dict[str, Any], profiles: dict[str, list[str]]) -> dict[str, Any]:
    """The statement with ``rest[0].resource[].supportedProfile`` filled in."""
    if not profiles:
        return statement
    rest = dict(statement["rest"][0])
    rest["resource"] = [{**r, "supportedProfile": profiles[r["type"]]} if r["type"] in profiles else r
                        for r in rest["resource"]]
    return {**statement, "rest": [rest, *statement["rest"][1:]]}
