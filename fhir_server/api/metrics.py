"""Prometheus ``/metrics`` (the prometheus-client library): what operators alert on.

- ``fhir_http_request_duration_seconds`` (histogram) and ``fhir_http_errors_total`` (counter), labelled by
  FHIR interaction (read, search-type, create, ...; ``auth``, ``admin``, ``other`` outside the FHIR base)
  and resource type (only known R4 types, so arbitrary URLs cannot blow up the label set);
- read from the database at scrape time, so every process and worker is counted:
  ``fhir_hl7v2_messages`` by status, ``fhir_outbox_rows`` by status and ``fhir_outbox_oldest_due_seconds``,
  ``fhir_bulk_jobs`` by kind and status; and this process's ``fhir_db_pool_connections`` (in use, idle).

Several ``serve --workers`` processes: ``PROMETHEUS_MULTIPROC_DIR`` (set by ``serve`` when unset) makes
the request metrics add up over the processes, as prometheus-client's multiprocess mode does.

Access: a bearer equal to ``FHIR_METRICS_TOKEN`` (what a Prometheus scrape job sends), or an admin token.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Select, TableClause, column, func, select, table
from starlette.concurrency import run_in_threadpool

from fhir_server.api.tenants import stack_of
from fhir_server.audit.classify import classify
from fhir_server.definitions import resource_types
from fhir_server.tenancy.model import DEFAULT

router = APIRouter()
FHIR_PREFIX = "/fhir"
_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    """The per-request metrics of one app (each app its own registry: tests run many apps in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("fhir_http_request_duration_seconds", "HTTP request latency",
                                 ("interaction", "resource_type"), buckets=_BUCKETS, registry=self.registry)
        self.errors = Counter("fhir_http_errors_total", "HTTP responses with status >= 400",
                              ("interaction", "resource_type", "status"), registry=self.registry)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        interaction, rtype = labels(method, path)
        self.latency.labels(interaction, rtype).observe(seconds)
        if status >= 400:
            self.errors.labels(interaction, rtype, str(status)).inc()


def labels(method: str, path: str) -> tuple[str, str]:
    if path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/"):
        found = classify(method, path[len(FHIR_PREFIX):])
        if found is None:
            return "capabilities", ""
        rtype = found.resource_type or ""
        return found.code, rtype if rtype in resource_types() else ("" if not rtype else "unknown")
    area = path.strip("/").split("/", 1)[0]
    return (area if area in ("auth", "admin", "console", "health", "metrics") else "other"), ""


class StoreCollector(Collector):
    """Gauges read from the database at scrape time (shared by every process writing to it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hl7 = GaugeMetricFamily("fhir_hl7v2_messages", "Stored HL7 v2 messages by status", labels=("status",))
        outbox = GaugeMetricFamily("fhir_outbox_rows", "Outbox rows by status", labels=("status",))
        oldest = GaugeMetricFamily("fhir_outbox_oldest_due_seconds", "Age of the oldest due pending outbox row")
        jobs = GaugeMetricFamily("fhir_bulk_jobs", "Bulk data jobs by kind and status", labels=("kind", "status"))
        with self.engine.connect() as conn:
            for status, n in conn.execute(_count_by(table("hl7_message", column("status")), "status")):
                hl7.add_metric((status,), n)
            ob = table("outbox", column("status"), column("next_attempt_at"))
            for status, n in conn.execute(_count_by(ob, "status")):
                outbox.add_metric((status,), n)
            due = conn.execute(select(func.min(ob.c.next_attempt_at)).where(ob.c.status == "pending")).scalar()
            jt = table("bulk_job", column("kind"), column("status"))
            for kind, status, n in conn.execute(select(jt.c.kind, jt.c.status, func.count())
                                                .group_by(jt.c.kind, jt.c.status)):
                jobs.add_metric((kind, status), n)
        age = 0.0
        if due is not None:
            due = due if due.tzinfo else due.replace(tzinfo=UTC)
            age = max(0.0, (datetime.now(UTC) - due).total_seconds())
        oldest.add_metric((), age)
        pool = GaugeMetricFamily("fhir_db_pool_connections", "This process's database pool", labels=("state",))
        status_of = getattr(self.engine.pool, "checkedout", None)
        if status_of is not None:
            pool.add_metric(("in_use",), status_of())
            pool.add_metric(("idle",), getattr(self.engine.pool, "checkedin", lambda: 0)())
        yield from (hl7, outbox, oldest, jobs, pool)


def _count_by(tbl: TableClause, name: str) -> Select[tuple[Any, int]]:
    col = tbl.c[name]
    return select(col, func.count()).group_by(col)


def exposition(metrics: HttpMetrics, engine: Engine) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # the request metrics of every worker process
    else:
        registry.register(_Forward(metrics.registry))
    registry.register(StoreCollector(engine))
    return generate_latest(registry)


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield from self.registry.collect()


def token_matches(request: Request, expected: str | None) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), expected or "")


@router.get("/metrics", summary="Prometheus metrics (a metrics token or an admin token)")
async def metrics(request: Request) -> Response:
    from fhir_server.api.admin import require_admin  # here: admin imports the auth adapter

    if stack_of(request).code != DEFAULT:  # the whole process's figures: the platform's, never a tenant's
        return Response(status_code=404)
    settings = request.app.state.fhir.settings
    expected = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if not token_matches(request, expected):
        refused = await require_admin(request, "metrics", "the metrics")
        if refused is not None:
            return refused
    body = await run_in_threadpool(exposition, request.app.state.metrics, request.app.state.fhir.engine)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
