"""Data for the search bench: Patients, Encounters and Observations with realistic names, LOINC codes,
dates and UCUM values, COPYed straight into PostgreSQL together with their search index rows.

The index rows are what the server itself writes: every resource goes through the server's own
``Extractor`` (the search index hook's code) and the database full-text documents (``documents.py``).
Tables' secondary indexes are dropped for the load and rebuilt after it (their definitions are read from
the catalog first), which is how a bulk load is done; then VACUUM ANALYZE.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from common import libpq, log
from psycopg.types.json import Jsonb

LOINC = "http://loinc.org"
MRN = "http://hospital.example.org/mrn"
# (code, display, UCUM unit, low, high, weight): common vitals and labs, two rare labs (for _has).
CODES = [("8302-2", "Body height", "cm", 140, 195, 8), ("29463-7", "Body weight", "kg", 40, 120, 10),
         ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 16, 40, 8),
         ("8867-4", "Heart rate", "/min", 50, 120, 10),
         ("8480-6", "Systolic blood pressure", "mm[Hg]", 90, 180, 10),
         ("8462-4", "Diastolic blood pressure", "mm[Hg]", 50, 110, 10),
         ("8310-5", "Body temperature", "Cel", 35.5, 40, 6),
         ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 60, 250, 8),
         ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.5, 12, 4),
         ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.4, 3, 5),
         ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 8, 18, 5),
         ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 110, 320, 4),
         ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 128, 150, 4),
         ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3, 6, 4),
         ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 2, 16, 3),
         ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 0, 120, 0.05),
         ("2857-1", "Prostate specific Ag [Mass/volume] in Serum or Plasma", "ng/mL", 0, 12, 0.05)]
FAMILY = ["Sharma", "Patel", "Kumar", "Singh", "Gupta", "Reddy", "Iyer", "Nair", "Rao", "Das", "Mehta", "Joshi",
          "Chatterjee", "Banerjee", "Mukherjee", "Pillai", "Menon", "Kulkarni", "Desai", "Shah", "Bose", "Ghosh",
          "Verma", "Mishra", "Pandey", "Chopra", "Kapoor", "Malhotra", "Agarwal", "Saxena", "Smith", "Johnson",
          "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez",
          "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White",
          "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Hill",
          "Green", "Adams", "Baker", "Nelson", "Carter", "Mitchell", "Roberts", "Turner", "Phillips", "Campbell",
          "Parker", "Evans", "Edwards", "Collins", "Stewart", "Morris", "Murphy", "Cook", "Rogers", "Dupont",
          "Dupré", "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Rossi", "Russo", "Ferrari", "Silva"]
GIVEN = ["Aarav", "Vivaan", "Aditya", "Arjun", "Sai", "Reyansh", "Ananya", "Diya", "Aadhya", "Saanvi", "Priya",
         "Lakshmi", "Rahul", "Rohan", "Vikram", "Meera", "Kavya", "Isha", "Neha", "Pooja", "James", "Mary",
         "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth", "William", "Susan",
         "Richard", "Jessica", "Joseph", "Sarah", "Chloé", "Zoë", "José", "Renée", "Jürgen", "Sofia", "Lucas"]
NOTES = ["fasting", "sample", "repeat", "advised", "stable", "improving", "worsening", "reviewed", "discussed",
         "lifestyle", "diet", "exercise", "medication", "adherence", "follow-up", "clinic", "telephone", "referral",
         "nephrology", "cardiology", "endocrinology", "routine", "screening", "annual", "admission", "discharge",
         "ward", "outpatient", "emergency", "night", "morning", "evening", "haemolysed", "lipaemic", "icteric",
         "delayed", "urgent", "critical", "notified", "physician", "nurse", "recheck", "trend", "baseline"]
CITIES = ["Pune", "Mumbai", "Chennai", "Bengaluru", "Kolkata", "Delhi", "Hyderabad", "Boston", "Lyon", "Berlin"]
HEAVY_SHARE = 0.01  # patients with long records (hundreds of Observations): the paging queries use them
HEAVY_OBS = 300


@dataclass
class Sample:
    """What the query mix draws its values from."""

    patients: list[tuple[str, str, str, str]] = field(default_factory=list)  # (id, family, mrn, gender)
    heavy: list[str] = field(default_factory=list)
    encounters: list[tuple[str, str]] = field(default_factory=list)  # (patient id, encounter id)
    counts: dict[str, int] = field(default_factory=dict)
    index_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _div(text: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class Generator:
    def __init__(self, rng: random.Random, patients: int, observations: int,
                 practitioners: list[str] | None = None) -> None:
        self.rng = rng
        self.patients = patients
        heavy = max(1, int(patients * HEAVY_SHARE))
        self.heavy = set(range(heavy))  # the first patients (ids are random, so no bias in id order)
        rest = max(0, observations - heavy * HEAVY_OBS)
        self.per_light = rest / max(1, patients - heavy)
        self.weights = [c[5] for c in CODES]
        self.practitioners = practitioners or [_uuid(rng) for _ in range(max(10, patients // 50))]

    def practitioner(self, pid: str) -> dict[str, Any]:
        rng = self.rng
        return {"resourceType": "Practitioner", "id": pid, "active": True,
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": str(rng.randint(10**9, 10**10))}],
                "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)], "prefix": ["Dr."]}]}

    def record(self, n: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """Patient number ``n``: the Patient, its Encounters and its Observations."""
        rng = self.rng
        pid = _uuid(rng)
        family, given = rng.choice(FAMILY), rng.choice(GIVEN)
        gender = rng.choice(["male", "female"])
        birth = datetime(1930, 1, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 33_000))
        city = rng.choice(CITIES)
        mrn = f"MRN{n:08d}"
        patient = {"resourceType": "Patient", "id": pid,
                   "text": _div(f"{given} {family}, {gender}, born {birth.date().isoformat()}, lives in {city}"),
                   "identifier": [{"system": MRN, "value": mrn, "type": {"coding": [
                       {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
                   "name": [{"use": "official", "family": family, "given": [given]}], "gender": gender,
                   "birthDate": birth.date().isoformat(),
                   "telecom": [{"system": "phone", "value": f"+91-{rng.randint(7000000000, 9999999999)}"}],
                   "address": [{"city": city, "country": "IN" if city not in ("Boston", "Lyon", "Berlin") else "US"}]}
        count = HEAVY_OBS if n in self.heavy else int(self.per_light) + (rng.random() < self.per_light % 1)
        visits = max(1, min(count // 8 + 1, 40))
        start = max(birth, datetime(2012, 1, 1, tzinfo=UTC))
        span = (datetime(2025, 12, 31, tzinfo=UTC) - start).total_seconds()
        encounters = []
        for _ in range(visits):
            begin = start + timedelta(seconds=rng.random() * span)
            encounters.append({
                "resourceType": "Encounter", "id": _uuid(rng), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": f"Patient/{pid}"},
                "participant": [{"individual": {"reference": f"Practitioner/{rng.choice(self.practitioners)}"}}],
                "period": {"start": _instant(begin), "end": _instant(begin + timedelta(minutes=30))}})
        observations = []
        for _ in range(count):
            code, display, unit, low, high, _w = rng.choices(CODES, self.weights)[0]
            enc = rng.choice(encounters)
            when = datetime.fromisoformat(enc["period"]["start"].replace("Z", "+00:00"))
            value = round(rng.uniform(low, high), 1)
            notes = " ".join(rng.sample(NOTES, 2))
            observations.append({
                "resourceType": "Observation", "id": _uuid(rng), "status": "final",
                "text": _div(f"{display}: {value} {unit}; {notes}"),
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": "laboratory" if code[0] in "1267" else "vital-signs"}]}],
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
                "subject": {"reference": f"Patient/{pid}"}, "encounter": {"reference": f"Encounter/{enc['id']}"},
                "effectiveDateTime": _instant(when),
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
        return patient, encounters, observations


class Loader:
    """COPY resources, their history rows and their index rows, batch by batch, on one connection."""

    def __init__(self, conn: psycopg.Connection[Any], sample: Sample) -> None:
        from fhir_server.search.extract import Extractor
        from fhir_server.search.fulltext.documents import content, narrative
        from fhir_server.search.fulltext.tables import SEARCH_TEXT
        from fhir_server.search.registry import core_registry
        from fhir_server.search.tables import TABLES

        self.conn = conn
        self.sample = sample
        self.extractor = Extractor(core_registry())
        self.narrative, self.content = narrative, content
        self.tables = {kind: (t.name, [c.name for c in t.columns if c.name != "pk"]) for kind, t in TABLES.items()}
        self.tables["text"] = (SEARCH_TEXT.name, ["resource_type", "resource_id", "narrative", "content"])
        self.rows: dict[str, list[tuple[Any, ...]]] = {k: [] for k in [*self.tables, "resource"]}
        self.stamp = datetime(2026, 1, 1, tzinfo=UTC)
        self.extract_seconds = 0.0
        self.copy_seconds = {"resource": 0.0, "index": 0.0}

    def add(self, resource: dict[str, Any]) -> None:
        rtype, rid = resource["resourceType"], resource["id"]
        self.stamp += timedelta(milliseconds=3)
        content = {"resourceType": rtype, "id": rid,
                   "meta": {"versionId": "1", "lastUpdated": self.stamp.isoformat(timespec="milliseconds")
                            .replace("+00:00", "Z")},
                   **{k: v for k, v in resource.items() if k not in ("resourceType", "id")}}
        self.rows["resource"].append((rtype, rid, 1, self.stamp, False, Jsonb(content, dumps=_json)))
        t0 = time.perf_counter()
        extracted = self.extractor.extract(rtype, rid, content)
        for kind, batch in extracted.rows.items():
            columns = self.tables[kind][1]
            self.rows[kind].extend(tuple(row.get(c) for c in columns) for row in batch)
        self.rows["text"].append((rtype, rid, self.narrative(content), self.content(content)))
        self.extract_seconds += time.perf_counter() - t0
        self.sample.index_rows += extracted.count() + 1
        self.sample.counts[rtype] = self.sample.counts.get(rtype, 0) + 1
        if len(self.rows["resource"]) >= 5000:
            self.flush()

    def flush(self) -> None:
        with self.conn.cursor() as cur:
            for kind, rows in self.rows.items():
                if not rows:
                    continue
                t0 = time.perf_counter()
                if kind == "resource":
                    sql = "COPY resource (resource_type, id, version_id, last_updated, deleted, content) FROM STDIN"
                else:
                    name, columns = self.tables[kind]
                    sql = f"COPY {name} ({', '.join(columns)}) FROM STDIN"
                with cur.copy(sql) as copy:
                    for row in rows:
                        copy.write_row(row)
                self.copy_seconds["resource" if kind == "resource" else "index"] += time.perf_counter() - t0
                rows.clear()


def search_tables() -> list[str]:
    from fhir_server.search.fulltext.tables import SEARCH_TEXT
    from fhir_server.search.tables import TABLES

    return [*(t.name for t in TABLES.values()), SEARCH_TEXT.name]


CHUNK = 500  # patients per unit of work handed to a load process
_worker: dict[str, Any] = {}  # per load process: its Loader (own connection) and the Generator's inputs


def _init_worker(database_url: str, patients: int, observations: int, seed: int, practitioners: list[str]) -> None:
    conn = psycopg.connect(libpq(database_url))
    _worker.update(conn=conn, sizes=(patients, observations), seed=seed, practitioners=practitioners)


def _load_chunk(chunk: tuple[int, int, int]) -> Sample:
    """Generate and load patients ``first..end`` in this process, committed; what the query mix needs back.

    Each chunk has its own random stream (seeded by its number) so the data does not depend on how many
    processes load it, and its own span of lastUpdated stamps (1000 s per chunk, 3 ms apart)."""
    number, first, end = chunk
    part = Sample()
    rng = random.Random(_worker["seed"] * 7919 + number + 1)
    patients, observations = _worker["sizes"]
    gen = Generator(rng, patients, observations, practitioners=_worker["practitioners"])
    loader = Loader(_worker["conn"], part)
    loader.stamp = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=1000 * (number + 1))
    for n in range(first, end):
        patient, encounters, obs = gen.record(n)
        for resource in (patient, *encounters, *obs):
            loader.add(resource)
        part.patients.append((patient["id"], patient["name"][0]["family"], patient["identifier"][0]["value"],
                              patient["gender"]))
        if n in gen.heavy:
            part.heavy.append(patient["id"])
        part.encounters.append((patient["id"], encounters[0]["id"]))
    loader.flush()
    _worker["conn"].commit()
    part.seconds = {"extract index rows": loader.extract_seconds, "COPY resources": loader.copy_seconds["resource"],
                    "COPY index rows": loader.copy_seconds["index"]}
    return part


def _merge(sample: Sample, part: Sample) -> None:
    sample.patients.extend(part.patients)
    sample.heavy.extend(part.heavy)
    sample.encounters.extend(part.encounters)
    for kind, n in part.counts.items():
        sample.counts[kind] = sample.counts.get(kind, 0) + n
    sample.index_rows += part.index_rows
    for key, value in part.seconds.items():
        sample.seconds[key] = sample.seconds.get(key, 0.0) + value


def generate(database_url: str, patients: int, observations: int, seed: int, processes: int = 2) -> Sample:
    """Load the data with ``processes`` loader processes (index extraction is the CPU cost: about 1-2 ms per
    resource), each on its own connection; the extract/COPY seconds reported are summed over them."""
    sample = Sample()
    gen = Generator(random.Random(seed), patients, observations)
    began = time.perf_counter()
    with psycopg.connect(libpq(database_url)) as conn:
        tables = ["resource", *search_tables()]
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) "
                               "AND indexname NOT LIKE 'pk_%%'", (tables,)).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        loader = Loader(conn, sample)
        for pid in gen.practitioners:
            loader.add(gen.practitioner(pid))
        loader.flush()
        conn.commit()
        chunks = [(i, a, min(a + CHUNK, patients)) for i, a in enumerate(range(0, patients, CHUNK))]
        # fork: the children inherit the imported server code (registry built once per process, in init)
        context = multiprocessing.get_context("fork")
        with context.Pool(processes, _init_worker, (database_url, patients, observations, seed,
                                                    gen.practitioners)) as pool:
            for done, part in enumerate(pool.imap(_load_chunk, chunks), 1):  # in order: a deterministic sample
                _merge(sample, part)
                if done % 10 == 0 or done == len(chunks):
                    log(f"  {len(sample.patients):,} patients, {sample.counts.get('Observation', 0):,} "
                        f"observations, {sample.index_rows:,} index rows, {time.perf_counter() - began:.0f}s")
        sample.seconds["generate + load"] = time.perf_counter() - began
        t0 = time.perf_counter()
        conn.execute("INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, "
                     "content) SELECT resource_type, id, version_id, last_updated, 'POST', deleted, content "
                     "FROM resource")
        conn.commit()
        sample.seconds["history rows"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        log(f"  rebuilding {len(indexes)} indexes")
        for _name, definition in indexes:
            t1 = time.perf_counter()
            conn.execute(definition)
            conn.commit()
            key = "index build: resource" if " ON public.resource " in definition else "index build: search"
            sample.seconds[key] = sample.seconds.get(key, 0.0) + time.perf_counter() - t1
        sample.seconds["rebuild indexes"] = time.perf_counter() - t0
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        t0 = time.perf_counter()
        for name in ["resource", "resource_history", *search_tables()]:
            conn.execute(f"VACUUM ANALYZE {name}")
        sample.seconds["VACUUM ANALYZE"] = time.perf_counter() - t0
    return sample


SAMPLE_TABLE = "bench_search_sample"  # kept in the bench database so --reuse-db can draw the same values


def save_sample(database_url: str, sample: Sample, meta: dict[str, Any]) -> None:
    body = {"meta": meta, "patients": sample.patients, "heavy": sample.heavy, "encounters": sample.encounters,
            "counts": sample.counts, "index_rows": sample.index_rows, "seconds": sample.seconds}
    with psycopg.connect(libpq(database_url)) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SAMPLE_TABLE} (content jsonb NOT NULL)")
        conn.execute(f"DELETE FROM {SAMPLE_TABLE}")
        conn.execute(f"INSERT INTO {SAMPLE_TABLE} (content) VALUES (%s)", (Jsonb(body, dumps=_json),))


def load_sample(database_url: str) -> tuple[Sample, dict[str, Any]]:
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute(f"SELECT content FROM {SAMPLE_TABLE}").fetchone()
    if row is None:
        raise SystemExit(f"no {SAMPLE_TABLE} row: the database was not loaded to the end")
    body = row[0]
    sample = Sample(patients=[(p[0], p[1], p[2], p[3]) for p in body["patients"]], heavy=body["heavy"],
                    encounters=[(e[0], e[1]) for e in body["encounters"]], counts=body["counts"],
                    index_rows=body["index_rows"], seconds=body["seconds"])
    return sample, body["meta"]


def sizes(database_url: str) -> dict[str, str]:
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute("SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class "
                            "WHERE relname = ANY(%s) ORDER BY relname",
                            (["resource", "resource_history", *search_tables()],)).fetchall()
        db = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
    out = {str(name): str(size) for name, size in rows}
    out["database"] = str(db[0]) if db else "?"
    return out
