"""``serve --workers N``: workers forked from a supervisor that loaded the FHIR definitions first.

uvicorn starts its workers with multiprocessing's *spawn*: each worker imports the code and parses the
bundled R4 definitions (StructureDefinitions, ValueSets, SearchParameters) itself, ~150 MB per worker that is
the same in every one. Forked after ``preload()``, the workers share those pages with the supervisor
(copy-on-write; ``gc.freeze`` keeps the collector from writing to them) and only what each changes becomes
its own. Every per-process resource (database engines, threads, the app) is still made in each worker, by
``fhir_server.asgi`` as before: nothing that holds a connection or a lock is made before the fork.
"""

from __future__ import annotations

import gc
import multiprocessing

from fhir_server import definitions

# What every worker loads while it starts or on its first write (search registry, validation, terminology);
# the small ones only some requests need stay lazy.
BUNDLES = ("search-parameters", "profiles-resources", "profiles-types", "valuesets")


def preload() -> None:
    """Import the application and parse the definitions in this (the supervisor) process."""
    import fhir_server.app  # noqa: F401  (the code every worker imports: shared too)

    for name in BUNDLES:
        definitions.load_bundle(name)
    definitions.resource_structure_definitions()
    definitions.type_structure_definitions()
    gc.collect()
    gc.freeze()  # what exists now is never scanned (so never written) by the collector again


def fork_workers() -> None:
    """Make uvicorn's supervisor fork its workers instead of spawning them (after ``preload``)."""
    import uvicorn._subprocess

    uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]
