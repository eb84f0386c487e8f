"""Generate fhir_server/definitions/required-codes.json.gz: {valueSetUrl: [codes]}.

Only value sets that R4 binds with strength ``required`` to ``code``-typed elements of resources and datatypes,
and only those that are fully enumerable from ``valuesets.json``: every include either names a core CodeSystem
with ``content: complete`` or lists its concepts explicitly (a closed list), no filters, imports resolvable the
same way. Everything else is left out, so the validator simply does not check those bindings.

Usage: python scripts/gen_required_codes.py [path/to/shared/fhir/r4/valuesets.json]
(default: ../shared/fhir/r4/valuesets.json beside the repository). Run once; the output is committed.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path
from typing import Any

import orjson

from fhir_server.definitions import resource_structure_definitions, type_structure_definitions

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fhir_server" / "definitions" / "required-codes.json.gz"


def required_code_bindings() -> set[str]:
    """Value set URLs (without version) bound required to ``code`` elements in R4's base definitions."""
    urls: set[str] = set()
    sds = list(resource_structure_definitions().values()) + list(type_structure_definitions().values())
    for sd in sds:
        for element in sd["snapshot"]["element"]:
            binding = element.get("binding") or {}
            codes = [t["code"] for t in element.get("type", [])]
            if binding.get("strength") == "required" and codes == ["code"] and binding.get("valueSet"):
                urls.add(binding["valueSet"].split("|", 1)[0])
    return urls


def _concepts(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for concept in concepts:
        out.append(concept["code"])
        out.extend(_concepts(concept.get("concept", [])))
    return out


class Expander:
    def __init__(self, bundle: dict[str, Any]) -> None:
        self.value_sets: dict[str, dict[str, Any]] = {}
        self.code_systems: dict[str, dict[str, Any]] = {}
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "ValueSet":
                self.value_sets[res["url"]] = res
            elif res["resourceType"] == "CodeSystem":
                self.code_systems[res["url"]] = res

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> set[str] | None:
        """All codes of the value set, or None when it is not fully enumerable from core CodeSystems."""
        vs = self.value_sets.get(url)
        if vs is None or url in seen or "compose" not in vs:
            return None
        codes: set[str] = set()
        for include in vs["compose"].get("include", []):
            part = self._part(include, seen | {url})
            if part is None:
                return None
            codes |= part
        for exclude in vs["compose"].get("exclude", []):
            part = self._part(exclude, seen | {url})
            if part is None:
                return None
            codes -= part
        return codes

    def _part(self, part: dict[str, Any], seen: frozenset[str]) -> set[str] | None:
        if part.get("filter"):
            return None
        codes: set[str] | None = None
        if "system" in part:
            cs = self.code_systems.get(part["system"])
            complete = cs is not None and cs.get("content") == "complete"
            known = set(_concepts(cs.get("concept", []))) if cs is not None and complete else set()
            if part.get("concept"):
                # an explicit list is a closed enumeration even for a system outside the core (units-of-time
                # lists its UCUM codes); for a core CodeSystem each listed code must exist there
                listed = {c["code"] for c in part["concept"]}
                if complete and not listed <= known:
                    return None
                codes = listed
            elif complete:
                codes = known
            else:
                return None
        for imported in part.get("valueSet", []):
            sub = self.expand(imported.split("|", 1)[0], seen)
            if sub is None:
                return None
            codes = sub if codes is None else codes & sub
        return codes


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "fhir" / "r4" / "valuesets.json"
    raw = source.read_bytes()
    expander = Expander(orjson.loads(raw))
    out: dict[str, list[str]] = {}
    skipped = []
    for url in sorted(required_code_bindings()):
        codes = expander.expand(url)
        if codes:
            out[url] = sorted(codes)
        else:
            skipped.append(url)
    data = orjson.dumps(out, option=orjson.OPT_SORT_KEYS)
    OUT.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"source sha256 {hashlib.sha256(raw).hexdigest()}")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(out)} value sets, {sum(map(len, out.values()))} codes; "
          f"output sha256 {hashlib.sha256(data).hexdigest()}")
    print(f"not enumerable ({len(skipped)}): {' '.join(skipped)}")


if __name__ == "__main__":
    main()
