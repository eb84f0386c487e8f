"""The canonical URL table (migration 0011, fhir_server/packages/canonical.py): kept in step with writes on
both databases, back-filled by the migration from resources stored before it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select

from fhir_server.config import Settings
from fhir_server.packages import canonical
from fhir_server.storage.database import make_engine
from fhir_server.storage.migrate import upgrade
from fhir_server.storage.models import RESOURCE
from tests.conftest import SYSTEM

URL = "http://example.org/fhir/ValueSet/canon"


def _vs(version: str, title: str) -> dict[str, object]:
    return {"resourceType": "ValueSet", "url": URL, "version": version, "status": "active", "title": title}


def test_lookup_follows_creates_updates_and_deletes(api) -> None:  # type: ignore[no-untyped-def]
    def find(version: str | None = None, url: str = URL) -> dict[str, object] | None:
        return api.fhir.uow.run(lambda repo: canonical.find(repo, "ValueSet", url, version), write=False, access=SYSTEM)

    assert find() is None
    assert api.http.put("ValueSet/v1", json={**_vs("1.0.0", "one"), "id": "v1"}).status_code == 201
    assert api.http.put("ValueSet/v2", json={**_vs("1.10.0", "ten"), "id": "v2"}).status_code == 201
    assert api.http.put("ValueSet/v3", json={**_vs("1.9.0", "nine"), "id": "v3"}).status_code == 201
    assert (find() or {})["title"] == "ten"  # the highest version, compared as numbers
    assert (find("1.0.0") or {})["title"] == "one"
    assert (find(url=f"{URL}|1.9.0") or {})["title"] == "nine"
    api.http.put("ValueSet/v2", json={**_vs("1.10.0", "ten, renamed"), "id": "v2"})
    assert (find() or {})["title"] == "ten, renamed"  # a new versionId: never the cached old content
    api.http.delete("ValueSet/v2")
    assert (find() or {})["title"] == "nine"
    api.http.put("ValueSet/v3", json={**_vs("1.9.0", "moved"), "id": "v3", "url": "http://other.example/vs"})
    assert (find() or {})["title"] == "one"
    expand = api.http.get("ValueSet/$expand", params={"url": "http://other.example/vs"})
    assert expand.status_code in (200, 422), expand.text  # found by its new URL (empty compose)
    assert api.http.get("ValueSet/$expand", params={"url": URL, "valueSetVersion": "1.9.0"}).status_code == 404


def test_migration_back_fills_canonical_resources(tmp_path: Path) -> None:
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path / 'old.sqlite3'}"))
    upgrade(engine, "0005")
    with engine.begin() as conn:
        now = datetime.now(UTC)
        stored = (("a", {"resourceType": "StructureDefinition", "url": "http://x/sd", "version": "2"}, False),
                  ("b", {"resourceType": "ValueSet", "url": "http://x/vs"}, False),
                  ("c", {"resourceType": "ValueSet", "url": "http://x/gone"}, True),
                  ("d", {"resourceType": "Patient"}, False))
        for rid, content, deleted in stored:
            conn.execute(insert(RESOURCE).values(resource_type=content["resourceType"], id=rid, version_id=3,
                                                 last_updated=now, deleted=deleted, content=content))
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(canonical.CANONICAL).order_by(canonical.CANONICAL.c.resource_id)).all()
    assert [(r.resource_type, r.url, r.resource_id, r.version, r.version_id) for r in rows] == [
        ("StructureDefinition", "http://x/sd", "a", "2", 3), ("ValueSet", "http://x/vs", "b", "", 3)]
    engine.dispose()
