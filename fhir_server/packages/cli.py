"""``fhir-server packages install PATH``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fhir_server.config import Settings
from fhir_server.storage.access import as_system


def add_parsers(sub: Any) -> None:
    pkgs = sub.add_parser("packages", help="FHIR packages (implementation guides): install")
    pkgs_sub = pkgs.add_subparsers(dest="packages_command", required=True)
    inst = pkgs_sub.add_parser("install", help="store a package's profiles, value sets, code systems... "
                                               "(a .tgz or a folder with package/package.json)")
    inst.add_argument("path")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fhir_server.errors import FhirError
    from fhir_server.packages.install import install, read_package
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.database import make_engine
    from fhir_server.storage.migrate import upgrade

    started = time.perf_counter()
    try:
        package = read_package(args.path)
    except (FhirError, OSError, ValueError) as exc:
        print(f"cannot read the package {args.path}: {exc}", file=sys.stderr)
        return 1
    engine = make_engine(settings)
    upgrade(engine)
    try:
        result = install(FhirServer(settings, engine), package,
                         access=as_system(f"fhir-server packages install {package.name}"))
    except FhirError as exc:
        print(f"the package {package.name}#{package.version} was not installed: {exc.message}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"package\t{package.name}#{package.version}")
    for rtype in sorted(set(result.created) | set(result.updated) | set(result.unchanged)):
        print(f"{rtype}\tcreated {result.created[rtype]}\tupdated {result.updated[rtype]}\t"
              f"unchanged {result.unchanged[rtype]}")
    for url in package.no_snapshot:
        print(f"warning\t{url} has no snapshot and none could be generated: nothing validates against it",
              file=sys.stderr)
    print(f"seconds\t{time.perf_counter() - started:.1f}")
    return 0
