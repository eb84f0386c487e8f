"""``fhir-server packages install PATH``: the conformance and terminology resources of a FHIR package.

A package is an npm-style tarball (``.tgz``) or a folder holding ``package/package.json`` (or being the
``package`` folder itself). Its top-level JSON resources of the types below are stored as ordinary
resources (examples, in ``package/example/``, are not). Matching is by canonical URL, then id: a resource
whose URL is already stored updates that one (a new version only when its content changed), a new one
keeps the package's id unless another resource holds it. So installing again is harmless, and installing
a newer release updates in place. One transaction for the whole package: all of it or nothing.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fhir_server.errors import INVALID, NOT_FOUND, FhirError
from fhir_server.packages import canonical
from fhir_server.rest import integrity

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import AccessPolicy, Repository

INSTALLED = frozenset({"StructureDefinition", "ValueSet", "CodeSystem", "ConceptMap", "SearchParameter",
                       "NamingSystem", "OperationDefinition", "CapabilityStatement", "ImplementationGuide",
                       "CompartmentDefinition", "StructureMap"})
_IGNORED_META = ("versionId", "lastUpdated")


@dataclass
class Package:
    name: str
    version: str
    resources: list[dict[str, Any]]
    # StructureDefinitions shipped without a snapshot; after install, those whose snapshot could not be made
    no_snapshot: list[str] = field(default_factory=list)


@dataclass
class InstallResult:
    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)


def read_package(path: str | Path) -> Package:
    """The package's manifest and installable resources, from a .tgz or a folder."""
    p = Path(path)
    files: dict[str, bytes] = {}
    if p.is_file():
        try:
            with tarfile.open(p, "r:*") as tar:
                for member in tar.getmembers():
                    name = member.name.lstrip("./")
                    if member.isfile() and name.startswith("package/") and name.count("/") == 1 \
                            and name.endswith(".json"):
                        handle = tar.extractfile(member)
                        if handle is not None:
                            files[name.removeprefix("package/")] = handle.read()
        except tarfile.TarError as exc:
            raise FhirError(400, INVALID, f"{p} is not a package tarball: {exc}") from exc
    elif p.is_dir():
        folder = p / "package" if (p / "package" / "package.json").is_file() else p
        if not (folder / "package.json").is_file():
            raise FhirError(404, NOT_FOUND, f"{p} holds no package/package.json")
        files = {f.name: f.read_bytes() for f in sorted(folder.glob("*.json"))}
    else:
        raise FhirError(404, NOT_FOUND, f"{p} does not exist")
    if "package.json" not in files:
        raise FhirError(400, INVALID, f"{p} has no package/package.json")
    manifest = orjson.loads(files.pop("package.json"))
    resources, no_snapshot = [], []
    for name in sorted(files):
        if name.startswith(".") or name == ".index.json":
            continue
        try:
            res = orjson.loads(files[name])
        except orjson.JSONDecodeError as exc:
            raise FhirError(400, INVALID, f"{name} in the package is not valid JSON: {exc}") from exc
        if isinstance(res, dict) and res.get("resourceType") in INSTALLED:
            resources.append(res)
            if res["resourceType"] == "StructureDefinition" and not (res.get("snapshot") or {}).get("element"):
                no_snapshot.append(str(res.get("url")))
    # CodeSystems before the ValueSets that include them, definitions last
    order = {"CodeSystem": 0, "ValueSet": 1, "StructureDefinition": 3}
    resources.sort(key=lambda r: order.get(r["resourceType"], 2))
    return Package(str(manifest.get("name", "")), str(manifest.get("version", "")), resources, no_snapshot)


def _comparable(res: dict[str, Any] | None) -> Any:
    if res is None:
        return None
    out = dict(res)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in _IGNORED_META}
    out.pop("id", None)
    if meta:
        out["meta"] = meta
    return out


def _with_snapshots(repo: Repository, package: Package) -> None:
    """Generate the snapshot of each StructureDefinition that ships only a differential (``snapshot.py``),
    from its base in the package, the core, or the store; those that cannot be stay in ``no_snapshot``."""
    from fhir_server.definitions import resource_structure_definitions, type_structure_definitions
    from fhir_server.packages.snapshot import SnapshotError, generate
    from fhir_server.validation.service import bundled

    own = {str(r.get("url")): r for r in package.resources if r["resourceType"] == "StructureDefinition"}
    core = {sd["url"]: sd for sd in [*resource_structure_definitions().values(),
                                     *type_structure_definitions().values()]}

    def datatype(code: str) -> dict[str, Any] | None:
        return type_structure_definitions().get(code)

    def resolve(url: str, depth: int = 0) -> dict[str, Any] | None:
        sd = own.get(url) or core.get(url) or bundled().get(url) or canonical.find(repo, "StructureDefinition", url)
        if sd is None or depth > 10:
            return None
        if not (sd.get("snapshot") or {}).get("element") and url in own:
            base = resolve(str(sd.get("baseDefinition", "")).split("|", 1)[0], depth + 1)
            if base is None or not (base.get("snapshot") or {}).get("element"):
                return None
            try:
                sd["snapshot"] = {"element": generate(sd, base, datatype)}
            except SnapshotError:
                return None
        return sd

    package.no_snapshot = [url for url in package.no_snapshot if resolve(url) is None
                           or not (own[url].get("snapshot") or {}).get("element")]


def install(server: FhirServer, package: Package, *, access: AccessPolicy) -> InstallResult:
    """``access``: whose install this is (``fhir-server packages install``: the operator, ``as_system``)."""
    def work(repo: Repository) -> InstallResult:
        result = InstallResult()
        if package.no_snapshot:
            _with_snapshots(repo, package)
        # An ImplementationGuide lists its examples (Patient/example), which are not installed: a package's
        # references are not checked (rest/integrity.py).
        with integrity.suspended("package install"):
            for res in package.resources:
                _install_one(repo, res, result)
        return result

    result: InstallResult = server.uow.run(work, write=True, access=access)
    return result


def _install_one(repo: Repository, res: dict[str, Any], result: InstallResult) -> None:
    rtype = res["resourceType"]
    url, version = res.get("url"), res.get("version")
    existing = canonical.find(repo, rtype, f"{url}|{version}" if version else url) if isinstance(url, str) \
        else None
    target_id = existing.get("id") if existing is not None else res.get("id")
    current = repo.current(rtype, str(target_id)) if target_id else None
    live = current is not None and not current.deleted and current.content is not None
    if live and existing is None and current is not None and current.content is not None \
            and current.content.get("url") != url:
        target_id, live = None, False  # the package's id belongs to another resource: take a new one
    if live and current is not None and _comparable(current.content) == _comparable(res):
        result.unchanged[rtype] += 1
        return
    body = {k: v for k, v in res.items() if k not in ("meta", "id")}
    meta = {k: v for k, v in (res.get("meta") or {}).items() if k not in _IGNORED_META}
    if meta:
        body["meta"] = meta
    if target_id:
        repo.update(rtype, str(target_id), {**body, "id": target_id})
    else:
        repo.create(rtype, body)
    (result.updated if live else result.created)[rtype] += 1
