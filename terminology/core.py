"""Preload the FHIR R4 core terminology: every CodeSystem and ValueSet of the official ``valuesets.json``.

Stored as ordinary resources with their official ids (PUT), so the concept tables fill through the same
hook as any CodeSystem write. Resources already present are left alone: loading again only adds what is
missing. Resources the validator rejects are counted and skipped, never half-written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from fhir_server.definitions import bundle_resources
from fhir_server.errors import FhirError
from fhir_server.storage.models import RESOURCE
from terminology.tables import CODE_SYSTEM

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import AccessPolicy, Repository

CORE_MARKER = "http://hl7.org/fhir/administrative-gender"  # present once the core has been loaded
BATCH = 200  # resources per transaction


@dataclass
class LoadResult:
    loaded: int = 0
    present: int = 0
    rejected: int = 0


def core_resources(urls: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The core CodeSystems and ValueSets (CodeSystems first), or only those with the given canonical URLs."""
    wanted = set(urls) if urls is not None else None
    found = [r for r in bundle_resources("valuesets") if r.get("resourceType") in ("CodeSystem", "ValueSet")
             and (wanted is None or r.get("url") in wanted)]
    return sorted(found, key=lambda r: r["resourceType"] != "CodeSystem")


def core_loaded(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(CODE_SYSTEM.c.resource_id).where(CODE_SYSTEM.c.url == CORE_MARKER)).first() \
            is not None


def load_core(server: FhirServer, urls: Iterable[str] | None = None, *, access: AccessPolicy) -> LoadResult:
    """``access``: whose load this is (the operator's command or the server's preload: ``as_system``)."""
    result = LoadResult()
    todo = core_resources(urls)
    for start in range(0, len(todo), BATCH):
        chunk = todo[start:start + BATCH]

        def work(repo: Repository, chunk: list[dict[str, Any]] = chunk) -> LoadResult:
            done = LoadResult()
            by_type: dict[str, list[str]] = {}
            for res in chunk:
                by_type.setdefault(res["resourceType"], []).append(res["id"])
            rows = [(rtype, r.id, r.deleted) for rtype, ids in by_type.items() for r in repo.execute(
                select(RESOURCE.c.id, RESOURCE.c.deleted).where(RESOURCE.c.resource_type == rtype,
                                                                RESOURCE.c.id.in_(ids)))]
            present = {(rtype, rid) for rtype, rid, deleted in rows if not deleted}
            tombstones = {(rtype, rid) for rtype, rid, deleted in rows if deleted}
            for res in chunk:
                key = (res["resourceType"], res["id"])
                if key in present:
                    done.present += 1
                    continue
                try:  # validation fails before anything is written, so the rest of the batch stands
                    if key in tombstones:
                        repo.update(res["resourceType"], res["id"], res)
                    else:  # a create defers its inserts: the whole batch goes in bulk
                        repo.create(res["resourceType"], res, resource_id=res["id"], method="PUT")
                    done.loaded += 1
                except FhirError:
                    done.rejected += 1
            return done

        done = server.uow.run(work, write=True, access=access)
        result.loaded += done.loaded
        result.present += done.present
        result.rejected += done.rejected
    return result
