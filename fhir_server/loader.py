"""``fhir-server load``: Bundles (.json) and resources (.ndjson) into the store, through the same
transaction path as the REST API (validation, hooks, history)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import orjson

from fhir_server.config import Settings
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.repository import AccessPolicy
from fhir_server.storage.statistics import analyze

CHUNK = 500


def as_transaction(resources: list[tuple[dict[str, Any], str | None]], *, upsert: bool = False) -> dict[str, Any]:
    """Resources (with their fullUrl, if any) as a transaction: PUT when they carry an id, else POST.

    ``upsert``: loading the same files again changes nothing twice. A ``urn:uuid:`` fullUrl becomes the
    resource's id (PUT ``Type/<uuid>``: Synthea's files load to the same ids every time); a resource with
    neither id nor such a fullUrl is created only if none with its first identifier exists (ifNoneExist)."""
    entries = []
    for res, full_url in resources:
        rtype = res.get("resourceType", "")
        urn_id = _uuid_of(full_url) if upsert else None
        if urn_id and not res.get("id"):
            entry = {"fullUrl": full_url, "resource": {**res, "id": urn_id},
                     "request": {"method": "PUT", "url": f"{rtype}/{urn_id}"}}
        elif full_url and full_url.startswith("urn:"):
            entry = {"fullUrl": full_url, "resource": res, "request": {"method": "POST", "url": rtype}}
        elif res.get("id"):
            entry = {"resource": res, "request": {"method": "PUT", "url": f"{rtype}/{res['id']}"}}
        else:
            request = {"method": "POST", "url": rtype}
            criteria = _identifier_criteria(res) if upsert else None
            if criteria:
                request["ifNoneExist"] = criteria
            entry = {"resource": res, "request": request}
        if full_url and "fullUrl" not in entry:
            entry = {"fullUrl": full_url, **entry}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _uuid_of(full_url: str | None) -> str | None:
    if not full_url or not full_url.startswith("urn:uuid:"):
        return None
    try:
        return str(uuid.UUID(full_url[len("urn:uuid:"):]))
    except ValueError:
        return None


def _identifier_criteria(res: dict[str, Any]) -> str | None:
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            return urlencode({"identifier": f"{ident['system']}|{ident['value']}"})
    return None


def _bundles_of(path: Path, upsert: bool) -> Iterator[dict[str, Any]]:
    if path.suffix == ".ndjson":
        batch: list[tuple[dict[str, Any], str | None]] = []
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    batch.append((orjson.loads(line), None))
                if len(batch) >= CHUNK:
                    yield as_transaction(batch, upsert=upsert)
                    batch = []
        if batch:
            yield as_transaction(batch, upsert=upsert)
        return
    doc = orjson.loads(path.read_bytes())
    if doc.get("resourceType") != "Bundle":
        yield as_transaction([(doc, None)], upsert=upsert)
    elif doc.get("type") == "transaction" and not upsert:
        yield doc
    else:  # batch (Synthea writes batches with urn:uuid references), collection, searchset ...
        yield as_transaction([(e["resource"], e.get("fullUrl")) for e in doc.get("entry", []) if "resource" in e],
                             upsert=upsert)


def load_paths(settings: Settings, paths: list[str], out: IO[str], server: FhirServer | None = None, *,
               access: AccessPolicy, upsert: bool = False, err: IO[str] | None = None) -> int:
    """``access``: whose load this is (``fhir-server load``: the operator, ``as_system``).
    Exit status: 0 all loaded, 1 some Bundles failed, 2 a path does not exist or is not JSON."""
    err = err or out
    missing = [raw for raw in paths if not Path(raw).exists()]
    if missing:
        err.write(f"fhir-server load: no such file or directory: {', '.join(missing)}\n")
        return 2
    server = server or FhirServer(settings)
    counts: Counter[str] = Counter()
    failed = 0
    files = [p for raw in paths for p in (sorted(Path(raw).glob("*.*json")) if Path(raw).is_dir() else [Path(raw)])]
    for path in files:
        try:
            bundles = list(_bundles_of(path, upsert))
        except (orjson.JSONDecodeError, AttributeError) as exc:
            err.write(f"{path}: not a FHIR JSON resource, Bundle or NDJSON file ({type(exc).__name__})\n")
            failed += 1
            continue
        for bundle in bundles:
            resp = server.handle(FhirRequest("POST", "", headers={"content-type": "application/fhir+json"},
                                             resource=bundle, base_url=settings.base_url or "", access=access))
            if resp.status != 200:
                failed += 1
                diag = "; ".join(i.get("diagnostics", "") for i in (resp.resource or {}).get("issue", []))
                out.write(f"{path}: failed ({resp.status}): {diag}\n")
                continue
            for entry in bundle.get("entry", []):
                counts[entry.get("resource", {}).get("resourceType", "?")] += 1
    if counts:  # the first searches after a load plan as well as later ones (storage/statistics.py)
        analyze(server.engine)
    for rtype, n in sorted(counts.items()):
        out.write(f"{rtype}\t{n}\n")
    out.write(f"total\t{sum(counts.values())}\n")
    return 1 if failed else 0
