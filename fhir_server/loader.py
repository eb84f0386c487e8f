"""``fhir-server load``: Bundles (.json) and resources (.ndjson) into the store, through the same
transaction path as the REST API (validation, hooks, history)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from fhir_server.config import Settings
from fhir_server.rest.request import FhirRequest
from fhir_server.rest.server import FhirServer
from fhir_server.storage.repository import AccessPolicy

CHUNK = 500


def as_transaction(resources: list[tuple[dict[str, Any], str | None]]) -> dict[str, Any]:
    """Resources (with their fullUrl, if any) as a transaction: PUT when they carry an id, else POST."""
    entries = []
    for res, full_url in resources:
        rtype = res.get("resourceType", "")
        if full_url and full_url.startswith("urn:"):
            entry = {"fullUrl": full_url, "resource": res, "request": {"method": "POST", "url": rtype}}
        elif res.get("id"):
            entry = {"resource": res, "request": {"method": "PUT", "url": f"{rtype}/{res['id']}"}}
        else:
            entry = {"resource": res, "request": {"method": "POST", "url": rtype}}
        if full_url and "fullUrl" not in entry:
            entry = {"fullUrl": full_url, **entry}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _bundles_of(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".ndjson":
        batch: list[tuple[dict[str, Any], str | None]] = []
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    batch.append((orjson.loads(line), None))
                if len(batch) >= CHUNK:
                    yield as_transaction(batch)
                    batch = []
        if batch:
            yield as_transaction(batch)
        return
    doc = orjson.loads(path.read_bytes())
    if doc.get("resourceType") != "Bundle":
        yield as_transaction([(doc, None)])
    elif doc.get("type") == "transaction":
        yield doc
    else:  # batch (Synthea writes batches with urn:uuid references), collection, searchset ...
        yield as_transaction([(e["resource"], e.get("fullUrl")) for e in doc.get("entry", []) if "resource" in e])


def load_paths(settings: Settings, paths: list[str], out: IO[str], server: FhirServer | None = None, *,
               access: AccessPolicy) -> int:
    """``access``: whose load this is (``fhir-server load``: the operator, ``as_system``)."""
    server = server or FhirServer(settings)
    counts: Counter[str] = Counter()
    failed = 0
    files = [p for raw in paths for p in (sorted(Path(raw).glob("*.*json")) if Path(raw).is_dir() else [Path(raw)])]
    for path in files:
        for bundle in _bundles_of(path):
            resp = server.handle(FhirRequest("POST", "", headers={"content-type": "application/fhir+json"},
                                             resource=bundle, base_url=settings.base_url or "", access=access))
            if resp.status != 200:
                failed += 1
                diag = "; ".join(i.get("diagnostics", "") for i in (resp.resource or {}).get("issue", []))
                out.write(f"{path}: failed ({resp.status}): {diag}\n")
                continue
            for entry in bundle.get("entry", []):
                counts[entry.get("resource", {}).get("resourceType", "?")] += 1
    for rtype, n in sorted(counts.items()):
        out.write(f"{rtype}\t{n}\n")
    out.write(f"total\t{sum(counts.values())}\n")
    return 1 if failed else 0
