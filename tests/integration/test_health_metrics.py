"""Operations conventions over real HTTP: health probes, Prometheus metrics, request ids, JSON logs."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator

import orjson
import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine

from fhir_server.api.health import readiness
from fhir_server.config import Settings
from fhir_server.logs import REQUEST_ID, JsonFormatter, RequestIdFilter
from tests.conftest import Backend, LiveServer, _free_port
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_hl7_admin import user_token

METRICS_TOKEN = "scrape-secret-0123456789"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, metrics_token=SecretStr(METRICS_TOKEN))


def test_live_and_ready(api: LiveServer) -> None:
    root = api.url.rsplit("/fhir", 1)[0]
    assert api.http.get(f"{root}/health/live").json() == {"status": "pass"}
    ready = api.http.get(f"{root}/health/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "pass"
    assert body["checks"]["database"]["status"] == "pass"
    assert body["checks"]["migrations"]["status"] == "pass"
    assert "broker" not in body["checks"]  # none configured


def test_ready_fails_on_a_database_behind_the_code(tmp_path: object) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/empty.sqlite3")
    engine = create_engine(settings.database_url)
    checks = readiness(engine, settings)
    assert checks["database"]["status"] == "pass"
    assert checks["migrations"]["status"] == "fail"
    assert "fhir-server migrate" in checks["migrations"]["output"]


def test_ready_checks_the_broker(backend: Backend) -> None:
    down = backend.settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{_free_port()}/0"})
    assert readiness(backend.engine, down)["broker"]["status"] == "fail"
    redis_url = os.environ.get("FHIR_TEST_REDIS_URL")
    if redis_url is None:
        pytest.skip("FHIR_TEST_REDIS_URL is not set (scripts/test.sh starts Redis)")
    up = backend.settings.model_copy(update={"broker_url": redis_url})
    assert readiness(backend.engine, up)["broker"]["status"] == "pass"


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_need_the_scrape_token_or_an_admin(smart: Smart) -> None:
    url = f"{smart.root}/metrics"
    assert smart.http.get(url).status_code == 401
    assert smart.http.get(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    clinician = smart.system_token("system/Patient.r")
    assert smart.http.get(url, headers={"Authorization": f"Bearer {clinician}"}).status_code == 403
    admin = user_token(smart, "admin")
    assert smart.http.get(url, headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert smart.http.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200


def test_metrics_count_interactions_errors_and_store_state(smart: Smart) -> None:
    created = smart.as_admin("POST", "Patient", json={"resourceType": "Patient", "active": True})
    assert created.status_code == 201
    token = smart.system_token("system/Patient.r")
    for _ in range(3):
        assert smart.fhir("GET", f"Patient/{created.json()['id']}", token).status_code == 200
    assert smart.fhir("GET", "Patient/no-such-patient", token).status_code == 404
    assert smart.fhir("GET", "NotAType/1", token).status_code in (400, 404)
    text = smart.http.get(f"{smart.root}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    reads = _sample(text, "fhir_http_request_duration_seconds_count", interaction="read", resource_type="Patient")
    assert reads is not None and reads >= 4
    assert (_sample(text, "fhir_http_errors_total", interaction="read", resource_type="Patient", status="404")
            or 0) >= 1
    assert 'resource_type="NotAType"' not in text  # unknown types never become labels
    assert _sample(text, "fhir_outbox_oldest_due_seconds") is not None
    assert "# TYPE fhir_hl7v2_messages gauge" in text and "# TYPE fhir_bulk_jobs gauge" in text
    assert _sample(text, "fhir_db_pool_connections", state="in_use") is not None


def test_request_id_is_returned_and_kept_when_safe(api: LiveServer) -> None:
    fresh = api.http.get("metadata")
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
    assert api.http.get("metadata").headers["x-request-id"] != fresh.headers["x-request-id"]
    assert api.http.get("metadata", headers={"X-Request-ID": "lb-7f3a.1"}).headers["x-request-id"] == "lb-7f3a.1"
    forged = api.http.get("metadata", headers={"X-Request-ID": "x\" level=ERROR forged"})
    assert forged.headers["x-request-id"] != "x\" level=ERROR forged"


def test_json_log_lines_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json_log")
    logger.addHandler(handler)
    logger.propagate = False
    token = REQUEST_ID.set("req-42")
    try:
        logger.warning("stored %d messages", 3)
    finally:
        REQUEST_ID.reset(token)
        logger.removeHandler(handler)
    line = orjson.loads(stream.getvalue().splitlines()[0])
    assert line["request_id"] == "req-42"
    assert line["message"] == "stored 3 messages" and line["level"] == "WARNING"


def test_landing_page_links_the_entry_points(api: LiveServer) -> None:
    root = api.url.rsplit("/fhir", 1)[0]
    page = api.http.get(f"{root}/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for href in ("/fhir/metadata", "/fhir/.well-known/smart-configuration", "/docs"):
        assert f'href="{href}"' in page.text
        assert api.http.get(f"{root}{href}").status_code == 200
    as_json = api.http.get(f"{root}/", headers={"Accept": "application/json"}).json()
    assert as_json["links"]["CapabilityStatement"] == "/fhir/metadata"
    missing = api.http.get(f"{root}/no-such-page")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/json")
