"""The pharmacy's knowledge as data: drug classes (ConceptMap to ATC), interactions (CodeSystem + ConceptMap)
and rule thresholds (rules.json), all in ``data/``.

A hospital replaces a table by storing its own CodeSystem or ConceptMap with the same canonical URL (PUT or
POST it like any resource): the stored one wins over the packaged file from the next write on. Parsed tables
are cached per server, keyed by the newest CodeSystem / ConceptMap history row, so a change is seen at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from fhir_server.storage.access import as_system
from fhir_server.storage.models import RESOURCE_HISTORY as HIST
from fhir_server.storage.repository import Repository
from fhir_server.workflows.pharmacy.common import ATC

DATA = Path(__file__).parent / "data"
CLASSES_URL = "https://fhir-server.dev/ConceptMap/medication-atc"
INTERACTIONS_URL = "https://fhir-server.dev/CodeSystem/drug-interaction"
PAIRS_URL = "https://fhir-server.dev/ConceptMap/drug-interaction"
_FILES = {CLASSES_URL: "medication-atc.json", INTERACTIONS_URL: "drug-interaction-codesystem.json",
          PAIRS_URL: "drug-interaction-conceptmap.json"}


@dataclass(frozen=True)
class Interaction:
    code: str  # the CodeSystem concept (DDI-01)
    a: str  # ATC substance or class
    b: str
    severity: str  # high | moderate | low
    display: str
    definition: str


@dataclass(frozen=True)
class Rules:
    validity_days: int
    duplicate_class_length: int
    duplicate_classes: tuple[str, ...]
    expiry_alert_days: int
    reorder_default: float
    reorder_levels: dict[str, float]

    def reorder_level(self, system: str, code: str) -> float:
        return self.reorder_levels.get(f"{system}|{code}", self.reorder_default)


def load_rules() -> Rules:
    raw = json.loads((DATA / "rules.json").read_text())
    return Rules(int(raw["prescription_validity_days"]), int(raw["duplicate_therapy_class_length"]),
                 tuple(raw["duplicate_therapy_classes"]), int(raw["expiry_alert_days"]),
                 float(raw["reorder_level_default"]), {k: float(v) for k, v in raw["reorder_levels"].items()})


@dataclass(frozen=True)
class Tables:
    """The tables as one write's checks see them (read once per check)."""
    classes: dict[tuple[str, str], list[str]]
    interactions: list[Interaction]

    def to_atc(self, system: str, code: str) -> list[str]:
        """The ATC codes of a coding: itself when it is ATC, else what the classes ConceptMap maps it to."""
        return [code] if system == ATC else self.classes.get((system, code), [])


@dataclass
class Knowledge:
    rules: Rules = field(default_factory=load_rules)
    _cache: dict[str, tuple[tuple[str, int] | None, Any]] = field(default_factory=dict)
    _tables: tuple[tuple[Any, ...], Tables] | None = None

    def tables(self, repo: Repository) -> Tables:
        # The newest CodeSystem and ConceptMap versions (two index lookups): unchanged, the tables are too,
        # and the three searches for stored replacements are skipped.
        marker = tuple(repo.execute(select(*(
            select(func.max(HIST.c.pk)).where(HIST.c.resource_type == t).scalar_subquery()
            for t in ("CodeSystem", "ConceptMap")))).one())
        cached = self._tables
        if cached is not None and cached[0] == marker:
            return cached[1]
        tables = self._load(repo)
        self._tables = (marker, tables)
        return tables

    def _load(self, repo: Repository) -> Tables:
        concepts: dict[str, tuple[str, str, str]] = self._table(repo, INTERACTIONS_URL, "CodeSystem", _concepts)
        pairs: list[tuple[str, str, str]] = self._table(repo, PAIRS_URL, "ConceptMap", _pairs)
        interactions = []
        for a, b, code in pairs:
            severity, display, definition = concepts.get(code, ("moderate", code, ""))
            interactions.append(Interaction(code, a, b, severity, display, definition))
        return Tables(self._table(repo, CLASSES_URL, "ConceptMap", _classes), interactions)

    def _table(self, repo: Repository, url: str, rtype: str, parse: Any) -> Any:
        with repo.acting_as(as_system("pharmacy knowledge: the drug classes and interaction tables")):
            ids = repo.find_ids(rtype, [("url", url)], limit=1)
            stored = repo.read_many([(rtype, ids[0])]) if ids else []
        key = (stored[0].id, stored[0].version_id) if stored else None
        cached = self._cache.get(url)
        if cached is not None and cached[0] == key:
            return cached[1]
        content = stored[0].content if stored else json.loads((DATA / _FILES[url]).read_text())
        table = parse(content or {})
        self._cache[url] = (key, table)
        return table


def _classes(doc: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for group in doc.get("group") or []:
        if group.get("target") != ATC:
            continue
        for element in group.get("element") or []:
            targets = [t["code"] for t in element.get("target") or [] if t.get("code")
                       and t.get("equivalence") not in ("unmatched", "disjoint")]
            out.setdefault((group.get("source") or "", element.get("code") or ""), []).extend(targets)
    return out


def _concepts(doc: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    out = {}
    for concept in doc.get("concept") or []:
        severity = next((p.get("valueCode") for p in concept.get("property") or []
                         if p.get("code") == "severity"), "moderate")
        out[concept["code"]] = (severity, concept.get("display") or concept["code"], concept.get("definition") or "")
    return out


def _pairs(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for group in doc.get("group") or []:
        for element in group.get("element") or []:
            for target in element.get("target") or []:
                for product in target.get("product") or []:
                    if product.get("property") == INTERACTIONS_URL and product.get("value"):
                        out.append((element.get("code") or "", target.get("code") or "", product["value"]))
    return out
