"""Fast fill of a bench database with N stored resources, bypassing the API.

Why bypass: through the API, 1,000,000 resources would take far longer than the read bench may run on
this machine (see the ingest numbers). The fill writes exactly what the repository writes for a create
(``resource`` row + ``resource_history`` row, version 1, content with id and meta.versionId /
meta.lastUpdated) with PostgreSQL COPY, so reads and vreads see ordinary stored resources. It does not
write search index rows; the read bench does not search.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
from common import libpq, log
from synthea import RecordBuilder

COLUMNS = ("resource_type", "id", "version_id", "last_updated", "deleted", "content")


@dataclass
class FillResult:
    resources: int = 0
    seconds: float = 0.0
    sample: list[tuple[str, str]] = field(default_factory=list)  # (type, id) picked uniformly at random
    by_type: dict[str, int] = field(default_factory=dict)
    bytes_json: int = 0


def _copy_escape(text: str) -> str:
    # COPY text format: backslash is the escape character. orjson never emits raw tabs or newlines.
    return text.replace("\\", "\\\\")


def fill(database_url: str, total: int, *, seed: int, sample_size: int = 10_000, batch: int = 5_000) -> FillResult:
    """COPY ``total`` Synthea-style resources into ``resource``, then copy them into ``resource_history``."""
    rng = random.Random(seed)
    result = FillResult()
    start = time.perf_counter()
    first = datetime(2025, 1, 1, tzinfo=UTC)
    with psycopg.connect(libpq(database_url)) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY resource ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            lines: list[str] = []
            while result.resources < total:
                for record in RecordBuilder(rng, urn=False).patient_record(rng.randint(10, 16)):
                    if result.resources >= total:
                        break
                    n = result.resources
                    moment = first + timedelta(milliseconds=n * 7)
                    stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    content = {"resourceType": record.resource_type, "id": record.id,
                               "meta": {"versionId": "1", "lastUpdated": stamp}, **record.resource}
                    text = orjson.dumps(content).decode()
                    result.bytes_json += len(text)
                    lines.append(f"{record.resource_type}\t{record.id}\t1\t{moment.isoformat()}\tf\t"
                                 f"{_copy_escape(text)}\n")
                    result.by_type[record.resource_type] = result.by_type.get(record.resource_type, 0) + 1
                    # Reservoir sampling: a uniform sample of ids without keeping all of them.
                    if n < sample_size:
                        result.sample.append((record.resource_type, record.id))
                    else:
                        slot = rng.randint(0, n)
                        if slot < sample_size:
                            result.sample[slot] = (record.resource_type, record.id)
                    result.resources += 1
                if len(lines) >= batch:
                    copy.write("".join(lines))
                    lines.clear()
                    if result.resources % 100_000 < batch:
                        log(f"  filled {result.resources:,} / {total:,}")
            if lines:
                copy.write("".join(lines))
        log("  copying into resource_history")
        conn.execute("INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, "
                     "content) SELECT resource_type, id, version_id, last_updated, 'POST', deleted, content "
                     "FROM resource")
        conn.commit()
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        log("  VACUUM ANALYZE")
        conn.execute("VACUUM ANALYZE resource")
        conn.execute("VACUUM ANALYZE resource_history")
    result.seconds = time.perf_counter() - start
    return result


def table_sizes(database_url: str) -> dict[str, str]:
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute("SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class "
                            "WHERE relname IN ('resource', 'resource_history') ORDER BY relname").fetchall()
        db = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
    sizes = {str(name): str(size) for name, size in rows}
    sizes["database"] = str(db[0]) if db else "?"
    return sizes
