"""Property test: SQL date and string search agree with an independent in-memory evaluation of the same
FHIRPath (fhirpathpy) over the same resources, on SQLite and PostgreSQL."""

from __future__ import annotations

import calendar
import random
import unicodedata
from datetime import datetime, timedelta

import fhirpathpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveServer

NAMES = ["Åsa", "asbjørn", "Ása", "Bo", "Böll", "boris", "Chen", "chén", "Zoë", "zoe"]


def _bounds(text: str) -> tuple[datetime, datetime]:
    """[start, end) of a date of year, month or day precision (no timezones here)."""
    parts = [int(p) for p in text.split("-")]
    if len(parts) == 1:
        return datetime(parts[0], 1, 1), datetime(parts[0] + 1, 1, 1)
    if len(parts) == 2:
        start = datetime(parts[0], parts[1], 1)
        return start, start + timedelta(days=calendar.monthrange(parts[0], parts[1])[1])
    start = datetime(parts[0], parts[1], parts[2])
    return start, start + timedelta(days=1)


def _date_matches(prefix: str, value: str, target: str) -> bool:
    ps, pe = _bounds(value)
    rs, re = _bounds(target)
    return {"eq": ps <= rs and re <= pe, "ne": not (ps <= rs and re <= pe), "gt": re > pe, "lt": rs < ps,
            "ge": re > ps, "le": rs < pe, "sa": rs >= pe, "eb": re <= ps}[prefix]


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


dates = st.builds(lambda y, m, d, p: "-".join([f"{y}", f"{m:02d}", f"{d:02d}"][:p]),
                  st.integers(1998, 2002), st.integers(1, 12), st.integers(1, 28), st.integers(1, 3))


def test_sql_matches_in_memory_evaluation(api: LiveServer) -> None:
    rng = random.Random(7)
    resources = []
    for _ in range(30):
        y, m, d, p = rng.randint(1998, 2002), rng.randint(1, 12), rng.randint(1, 28), rng.randint(1, 3)
        body = {"resourceType": "Patient", "birthDate": "-".join([f"{y}", f"{m:02d}", f"{d:02d}"][:p]),
                "name": [{"family": rng.choice(NAMES), "given": [rng.choice(NAMES)]}]}
        resp = api.http.post("Patient", json=body)
        assert resp.status_code == 201
        resources.append(resp.json())
    birth = fhirpathpy.compile("Patient.birthDate")
    names = fhirpathpy.compile("Patient.name.family | Patient.name.given")

    def search(query: str) -> set[str]:
        bundle = api.http.get(f"Patient?{query}&_count=1000").json()
        return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(prefix=st.sampled_from(["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]), value=dates)
    def dates_agree(prefix: str, value: str) -> None:
        expected = {r["id"] for r in resources if any(_date_matches(prefix, value, b) for b in birth(r))}
        assert search(f"birthdate={prefix}{value}") == expected, (prefix, value)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text=st.sampled_from(NAMES).flatmap(lambda n: st.integers(1, len(n)).map(lambda k: n[:k])))
    def strings_agree(text: str) -> None:
        expected = {r["id"] for r in resources if any(_fold(n).startswith(_fold(text)) for n in names(r))}
        assert search(f"name={text}") == expected, text

    dates_agree()
    strings_agree()
