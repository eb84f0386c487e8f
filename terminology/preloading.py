"""Whether this process's ``serve`` is still loading the FHIR R4 core terminology into a database.

On the first start the core CodeSystems and ValueSets are stored in the background (terminology/cli.py,
``preload_in_background``), so for some seconds a request naming a core ValueSet finds nothing. That is
"not yet", not "no such ValueSet": the terminology operations answer 503 with Retry-After meanwhile, and 404
again once the load is over (or if the ValueSet truly is missing afterwards).

Process state about a job under way, keyed by the database's URL (password hidden); workers forked by
``serve --workers N`` inherit the start and never see the end, hence the time bound.
"""

from __future__ import annotations

import time
from functools import lru_cache

from sqlalchemy import Connection, Engine

from fhir_server.errors import TRANSIENT, FhirError

LIMIT_SECONDS = 300.0  # a load takes 5-20 s; past this a missing core ValueSet is simply missing
RETRY_AFTER = "5"
_STARTED: dict[str, float] = {}  # database URL -> when this process (or the one it was forked from) began


def _key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def started(engine: Engine) -> None:
    _STARTED[_key(engine)] = time.monotonic()


def finished(engine: Engine) -> None:
    _STARTED.pop(_key(engine), None)


def underway(conn: Connection) -> bool:
    """A core load into this connection's database began here less than LIMIT_SECONDS ago and has not
    ended. Only the default tenant gets the preload: a hospital's schema (schema_translate_map) never does."""
    if not _STARTED or conn.get_execution_options().get("schema_translate_map"):
        return False
    began = _STARTED.get(_key(conn.engine))
    return began is not None and time.monotonic() - began < LIMIT_SECONDS


@lru_cache(maxsize=1)
def core_urls() -> frozenset[str]:
    from terminology.core import core_resources

    return frozenset(str(r["url"]) for r in core_resources() if r.get("url"))


def not_yet(resource_type: str, url: str, conn: Connection) -> FhirError | None:
    """The 503 for a core CodeSystem/ValueSet asked for while the preload is storing them, else None."""
    if resource_type not in ("CodeSystem", "ValueSet") or not underway(conn) or url not in core_urls():
        return None
    return FhirError(503, TRANSIENT, f"The FHIR R4 core terminology is still being loaded ({resource_type} {url} "
                     "is not stored yet); retry in a few seconds", ("url",), headers={"Retry-After": RETRY_AFTER})
