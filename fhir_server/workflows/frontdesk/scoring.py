"""How alike two Patients are (Patient/$match): each feature scores 0..1, the total is the weighted mean over the
features both have (weights and grade thresholds in matching.json).

Names are compared as bags of tokens, so order does not matter (Indian names are written given-first or
family-first, with the father's name or the village in between): each token of the shorter name finds its best
partner in the other, by Jaro-Winkler similarity, by equal phonetic code (Metaphone: Srinivasan / Shrinivasan),
or as an initial (``R.`` for Ramesh). Blocking keys find candidates in the database (tables.MATCH_KEY).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jellyfish

from fhir_server.workflows.frontdesk.registration import identifier_systems

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


@dataclass(frozen=True)
class MatchConfig:
    weights: dict[str, float]
    certain: float
    probable: float
    possible: float
    warn: float  # a create whose best candidate scores at least this is a possible duplicate
    candidates: int  # how many blocked candidates are scored at most


@cache
def match_config() -> MatchConfig:
    data = json.loads((Path(__file__).parent / "matching.json").read_text())
    g = data["grades"]
    return MatchConfig(data["weights"], g["certain"], g["probable"], g["possible"], data["duplicateWarning"],
                       data["candidates"])


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c)).lower()


def name_tokens(patient: dict[str, Any]) -> list[list[str]]:
    """Each HumanName as its tokens (given, family, or the text when it has neither), folded."""
    out = []
    for name in patient.get("name") or []:
        if not isinstance(name, dict):
            continue
        parts = [p for p in name.get("given") or [] if isinstance(p, str)]
        if isinstance(name.get("family"), str):
            parts.append(name["family"])
        if not parts and isinstance(name.get("text"), str):
            parts = [name["text"]]
        tokens = [t for p in parts for t in re.split(r"[^a-z0-9]+", _fold(p)) if t]
        if tokens:
            out.append(tokens)
    return out


@lru_cache(maxsize=65536)  # a pure function of two strings; the same names come up again and again
def phonetic(token: str) -> str:
    return jellyfish.metaphone(token) or token


@lru_cache(maxsize=262144)
def _token_score(a: str, b: str) -> float:
    if a == b:
        return 1.0
    if len(a) == 1 or len(b) == 1:  # an initial
        return 0.85 if a[0] == b[0] else 0.0
    score = jellyfish.jaro_winkler_similarity(a, b)
    if phonetic(a) == phonetic(b):
        score = max(score, 0.92)
    elif jellyfish.damerau_levenshtein_distance(a, b) == 1 and min(len(a), len(b)) >= 4:
        score = max(score, 0.9)  # one typo: a transposition, a dropped or doubled letter
    return score


def _names_score(a: list[str], b: list[str]) -> float:
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    used: set[int] = set()
    total = 0.0
    for token in short:
        best, best_j = 0.0, -1
        for j, other in enumerate(long_):
            if j in used:
                continue
            s = _token_score(token, other)
            if s > best:
                best, best_j = s, j
        if best_j >= 0:
            used.add(best_j)
        total += best
    score = total / len(short)
    # A missing middle name costs a little; a name of one token matching one of three is weaker evidence.
    return score * (1.0 - 0.05 * (len(long_) - len(short)))


def name_score(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    na, nb = name_tokens(a), name_tokens(b)
    if not na or not nb:
        return None
    return max(_names_score(x, y) for x in na for y in nb)


def birth_date_score(a: Any, b: Any) -> float | None:
    if not isinstance(a, str) or not isinstance(b, str) or len(a) < 4 or len(b) < 4:
        return None
    if a == b:
        return 1.0
    if len(a) != 10 or len(b) != 10:  # a year or year-month against a full date
        return 0.7 if a[:len(min(a, b, key=len))] == b[:len(min(a, b, key=len))] else 0.0
    ya, ma, da = a[:4], a[5:7], a[8:10]
    yb, mb, db = b[:4], b[5:7], b[8:10]
    if ya == yb and ma == db and da == mb:
        return 0.8  # day and month swapped
    same = (ya == yb) + (ma == mb) + (da == db)
    if same == 2:
        digits = sum(x != y for x, y in zip(a, b, strict=True))
        return 0.75 if digits == 1 or sorted(a) == sorted(b) else 0.5  # one digit wrong or two transposed
    return 0.0


def _phones(patient: dict[str, Any]) -> set[str]:
    out = set()
    for t in patient.get("telecom") or []:
        if isinstance(t, dict) and t.get("system") in ("phone", "sms", None) and isinstance(t.get("value"), str):
            digits = re.sub(r"\D", "", t["value"])
            if len(digits) >= 7:
                out.add(digits[-10:])
    return out


def telecom_score(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    pa, pb = _phones(a), _phones(b)
    if not pa or not pb:
        return None
    return 1.0 if pa & pb else 0.0


def _address_parts(patient: dict[str, Any]) -> tuple[set[str], set[str]]:
    postal: set[str] = set()
    words: set[str] = set()
    for addr in patient.get("address") or []:
        if not isinstance(addr, dict):
            continue
        if isinstance(addr.get("postalCode"), str):
            postal.add(re.sub(r"\s", "", addr["postalCode"]))
        for part in [*(addr.get("line") or []), addr.get("city"), addr.get("district"), addr.get("text")]:
            if isinstance(part, str):
                words.update(w for w in re.split(r"[^a-z0-9]+", _fold(part)) if len(w) > 2)
    return postal, words


def address_score(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    (pa, wa), (pb, wb) = _address_parts(a), _address_parts(b)
    if not (pa or wa) or not (pb or wb):
        return None
    postal = (1.0 if pa & pb else 0.0) if pa and pb else None
    words = len(wa & wb) / len(wa | wb) if wa and wb else None
    parts = [p for p in (postal, words) if p is not None]
    return sum(parts) / len(parts) if parts else None


def unique_identifiers(patient: dict[str, Any], mrn_system: str) -> dict[str, set[str]]:
    systems = identifier_systems()
    out: dict[str, set[str]] = {}
    for ident in patient.get("identifier") or []:
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        system = ident.get("system")
        if system == mrn_system or (system in systems and systems[system].unique):
            out.setdefault(str(system), set()).add(ident["value"])
    return out


@dataclass(frozen=True)
class Score:
    score: float
    grade: str  # certain | probable | possible | certainly-not


def score(query: dict[str, Any], candidate: dict[str, Any], mrn_system: str) -> Score:
    cfg = match_config()
    ids_q, ids_c = unique_identifiers(query, mrn_system), unique_identifiers(candidate, mrn_system)
    if any(ids_q[s] & ids_c.get(s, set()) for s in ids_q):
        return Score(1.0, "certain")  # the same ABHA number or MRN: the same person
    systems = identifier_systems()
    conflicting = [s for s in ids_q if s in ids_c and s in systems and systems[s].one_per_person]
    features = {"name": name_score(query, candidate),
                "birthDate": birth_date_score(query.get("birthDate"), candidate.get("birthDate")),
                "gender": (1.0 if query.get("gender") == candidate.get("gender") else 0.0)
                if query.get("gender") and candidate.get("gender") else None,
                "telecom": telecom_score(query, candidate), "address": address_score(query, candidate)}
    present = {k: v for k, v in features.items() if v is not None}
    if "name" not in present:
        return Score(0.0, "certainly-not")
    weight = sum(cfg.weights[k] for k in present)
    total = round(sum(cfg.weights[k] * v for k, v in present.items()) / weight, 4)
    if len(present) == 1:  # a name alone is never more than possible
        total = min(total, cfg.possible)
    if conflicting:  # both have an ABHA number, and they differ: two people
        return Score(round(total * 0.5, 4), "certainly-not")
    grade = ("certain" if total >= cfg.certain else "probable" if total >= cfg.probable
             else "possible" if total >= cfg.possible else "certainly-not")
    return Score(total, grade)


def blocking_keys(patient: dict[str, Any], mrn_system: str) -> set[str]:
    """Keys under which a patient is filed and looked for: each name token's phonetic code, the birth date, the
    phone numbers, the unique identifiers. A candidate shares at least one with the query."""
    keys = {f"n:{phonetic(t)}"[:200] for tokens in name_tokens(patient) for t in tokens if len(t) > 1}
    if isinstance(patient.get("birthDate"), str):
        keys.add(f"b:{patient['birthDate']}")
    keys.update(f"t:{p}" for p in _phones(patient))
    keys.update(f"i:{s}|{v}"[:200] for s, vs in unique_identifiers(patient, mrn_system).items() for v in vs)
    return keys
