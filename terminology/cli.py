"""``fhir-server terminology load-core`` and ``import loinc|icd10|icd10cm|snomed PATH``; the core preload that
``serve`` starts when it is missing."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from typing import Any

from fhir_server.config import Settings
from fhir_server.storage.access import as_system

log = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    term = sub.add_parser("terminology", help="terminology: load the FHIR R4 core code systems and value sets")
    term_sub = term.add_subparsers(dest="terminology_command", required=True)
    term_sub.add_parser("load-core", help="store every CodeSystem and ValueSet of FHIR R4 (skips those present)")
    imp = term_sub.add_parser("import", help="import LOINC (Loinc.csv + hierarchy), ICD-10 (WHO ClaML XML), "
                                             "ICD-10-CM (CMS tabular XML) or SNOMED CT (RF2 snapshot) from the "
                                             "release files")
    imp.add_argument("system", choices=["loinc", "icd10", "icd10cm", "snomed"])
    imp.add_argument("path", help="the release folder (or the ClaML / tabular XML file for icd10 / icd10cm)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade
    from terminology.core import load_core

    engine = make_engine(settings)
    upgrade(engine)
    started = time.perf_counter()
    if args.terminology_command == "import":
        return _import(FhirServer(settings, engine), args.system, args.path, started)
    result = load_core(FhirServer(settings, engine), access=as_system("fhir-server terminology load-core"))
    print(f"loaded\t{result.loaded}\nalready present\t{result.present}\nrejected\t{result.rejected}\n"
          f"seconds\t{time.perf_counter() - started:.1f}")
    return 1 if result.rejected else 0


def _import(server: Any, system: str, path: str, started: float) -> int:
    from fhir_server.errors import FhirError
    from terminology.importers import icd10, icd10cm, loinc, snomed, store

    reader = {"loinc": loinc.read, "icd10": icd10.read, "icd10cm": icd10cm.read, "snomed": snomed.read}[system]
    try:
        imported = reader(path)
    except (FhirError, OSError, KeyError) as exc:  # KeyError: a release file lacks a column of its format
        print(f"cannot import {system} from {path}: {exc}", file=sys.stderr)
        return 1
    count = store(server, imported, access=as_system(f"fhir-server terminology import {system}"))
    print(f"CodeSystem\t{imported.url}\nversion\t{imported.version}\nconcepts\t{count}\n"
          f"seconds\t{time.perf_counter() - started:.1f}")
    return 0


def preload_in_background(settings: Settings) -> threading.Thread | None:
    """On ``serve``: load the core terminology once (about 5 s on SQLite) without delaying the start."""
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.database import make_engine
    from terminology import preloading
    from terminology.core import core_loaded, load_core

    if os.environ.get("FHIR_TERMINOLOGY_PRELOAD", "true").lower() in ("false", "0", "no"):
        return None
    engine = make_engine(settings)
    if core_loaded(engine):
        engine.dispose()
        return None

    preloading.started(engine)  # until it ends, a core ValueSet not stored yet is a 503, not a 404

    def work() -> None:
        try:
            started = time.perf_counter()
            result = load_core(FhirServer(settings, engine), access=as_system("core terminology preload on serve"))
            log.info("FHIR R4 core terminology loaded: %d resources in %.1f s (%d rejected)", result.loaded,
                     time.perf_counter() - started, result.rejected)
        except Exception:  # the server serves without it; `fhir-server terminology load-core` retries
            log.exception("loading the FHIR R4 core terminology failed")
        finally:
            preloading.finished(engine)
            engine.dispose()

    thread = threading.Thread(target=work, name="terminology-preload", daemon=True)
    thread.start()
    return thread
