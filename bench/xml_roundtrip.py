"""FHIR XML: every example of the R4 specification (npm package hl7.fhir.r4.examples, 5,306 resources)
JSON -> XML -> JSON, with the time each direction takes. Writes the ``xml`` section of RESULTS.md.

    python bench/xml_roundtrip.py --examples .cache/hl7.fhir.r4.examples-4.0.1/package

(scripts/test.sh fetches the package there.) Narratives are compared as XML (C14N): ``&quot;`` and ``"``
are the same text, and XML keeps no trace of which was written.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import orjson
from common import git_commit, load_average, log, table, write_section

from fhir_server.formats.xml import XmlError, from_xml, to_xml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", default=".cache/hl7.fhir.r4.examples-4.0.1/package")
    args = parser.parse_args()
    start_load = load_average()
    files = [p for p in sorted(Path(args.examples).glob("*.json")) if p.name[:1].isupper()]
    exact = equivalent = failed = 0
    json_bytes = xml_bytes = 0
    write_s = read_s = 0.0
    failures: list[str] = []
    for path in files:
        raw = path.read_bytes()
        resource = orjson.loads(raw)
        try:
            t0 = time.perf_counter()
            xml = to_xml(resource)
            t1 = time.perf_counter()
            back = from_xml(xml)
            t2 = time.perf_counter()
        except XmlError as exc:
            failed += 1
            failures.append(f"{path.name}: {exc}")
            continue
        write_s += t1 - t0
        read_s += t2 - t1
        json_bytes += len(raw)
        xml_bytes += len(xml)
        if back == resource:
            exact += 1
        elif equivalent(resource, back):
            equivalent += 1
        else:
            failed += 1
            failures.append(path.name)
    mib = json_bytes / 1024 / 1024
    rows = [["examples", len(files)], ["equal after JSON -> XML -> JSON", exact],
            ["equal but for narrative escaping (C14N)", equivalent], ["different or refused", failed],
            ["JSON read (MiB)", f"{mib:.1f}"], ["XML written (MiB)", f"{xml_bytes / 1024 / 1024:.1f}"],
            ["JSON -> XML (ms per MiB of JSON)", f"{write_s * 1000 / mib:.0f}"],
            ["XML -> JSON (ms per MiB of JSON)", f"{read_s * 1000 / mib:.0f}"]]
    print(table(["measure", "value"], rows))
    facts = [f"- cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python "
             f"{platform.python_version()}", f"- commit measured: {git_commit()}",
             f"- load average (1/5/15 min) at start: {start_load}; at end: {load_average()}"]
    body = "\n".join(["## FHIR XML round trip of the R4 examples (`bench/xml_roundtrip.py`)", "", *facts, "",
                      table(["measure", "value"], rows)] + ([f"\nFailures: {', '.join(failures[:20])}"]
                                                            if failures else []))
    write_section("xml", body)
    log(f"{exact + equivalent}/{len(files)} round trips equal")


if __name__ == "__main__":
    main()
