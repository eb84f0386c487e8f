"""Health probes for orchestrators: ``/health/live`` (the process answers) and ``/health/ready`` (it can serve).

Ready means: the database answers, its migrations are at the code's head (a server started against an
older schema would fail on its first write), and the broker answers when one is configured. Both are
public and say nothing about data; each check's outcome is named so an operator sees which one failed.
"""

from __future__ import annotations

import time
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from fhir_server.api.tenants import stack_of
from fhir_server.config import Settings
from fhir_server.storage.migrate import alembic_config

router = APIRouter()
BROKER_TIMEOUT_SECONDS = 2.0


@router.get("/health/live", summary="The process is up")
async def live() -> JSONResponse:
    return JSONResponse({"status": "pass"})


@router.get("/health/ready", summary="The server can serve: database, migrations, broker")
async def ready(request: Request) -> JSONResponse:
    engine: Engine = stack_of(request).fhir.engine
    settings: Settings = stack_of(request).fhir.settings
    checks = await run_in_threadpool(readiness, engine, settings)
    ok = all(check["status"] == "pass" for check in checks.values())
    return JSONResponse({"status": "pass" if ok else "fail", "checks": checks}, status_code=200 if ok else 503)


def readiness(engine: Engine, settings: Settings) -> dict[str, dict[str, Any]]:
    checks = {"database": _timed(lambda: _database(engine)),
              "migrations": _timed(lambda: _migrations(engine))}
    if settings.broker_url:
        checks["broker"] = _timed(lambda: _broker(settings.broker_url or ""))
    return checks


def _timed(check: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        detail = check()
    except Exception as exc:  # a probe reports, it never raises: the exception's class says what failed
        return {"status": "fail", "output": type(exc).__name__,
                "durationMs": round((time.perf_counter() - start) * 1000, 1)}
    out = {"status": "pass" if detail is None else "fail",
           "durationMs": round((time.perf_counter() - start) * 1000, 1)}
    if detail is not None:
        out["output"] = detail
    return out


def _database(engine: Engine) -> str | None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return None


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def _migrations(engine: Engine) -> str | None:
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    heads = head_revisions()
    if current == heads:
        return None
    return f"database at {sorted(current) or 'no migration'}, code at {sorted(heads)}: run `fhir-server migrate`"


def _broker(url: str) -> str | None:
    from kombu import Connection  # celery's transport library, present with the broker extra

    with Connection(url, connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
    return None
