"""Where a delivering process's CPU goes, per notification: the outbox dispatcher draining R4 rest-hook
notifications in-process on PostgreSQL (one lane: process CPU is then the delivery's alone), to a keep-alive
receiver in its own process. Each part's CPU is measured with ``time.process_time`` around it (no profiler
overhead); PostgreSQL's backends and the receiver's process are read from /proc. Writes the
``notify-profile`` section of RESULTS.md.

    .venv/bin/python bench/profile_notify.py               # 100 writes x 8 subscriptions, about 1 minute
    .venv/bin/python bench/profile_notify.py --quick       # no RESULTS.md
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CpuMeter,
    bench_database,
    facts_markdown,
    free_port,
    log,
    machine_facts,
    table,
    write_section,
)

RECEIVER = r'''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    do_PUT = do_POST
    def log_message(self, *a): pass
ThreadingHTTPServer.request_queue_size = 1024  # socketserver's 5 drops a burst of new connections' SYNs
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H); s.daemon_threads = True
print("ready", flush=True); s.serve_forever()
'''
# (label, class, method): CPU inside each, nested parts subtracted below.
PARTS = [("the whole delivery (the lane's turn)", "OutboxDispatcher", "_deliver_partition"),
         ("claim and sort by subscription", "OutboxDispatcher", "claim"),
         ("batch read: Subscription, state, author, events, focus", "RestHook", "_batch"),
         ("HTTP requests (http.client, guard; a window of them at once)", "RestHook", "send"),
         ("outbox writes: finish the delivered at the turn's end", "OutboxDispatcher", "_write")]


COUNT = "outbox writes: count a window's attempts, finish the one before"


def timed(cpu: dict[str, float], label: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            cpu[label] += time.process_time() - began
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="matching writes (one notification per subscription)")
    parser.add_argument("--subscriptions", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    import fhir_server.storage.outbox_window as windows
    from fhir_server.config import Settings
    from fhir_server.jobs.topics import install_outbox_topics
    from fhir_server.rest.request import FhirRequest
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.access import as_system
    from fhir_server.storage.migrate import upgrade
    from fhir_server.storage.outbox import OutboxDispatcher
    from fhir_server.subscriptions.delivery import RestHook

    cpu: dict[str, float] = defaultdict(float)
    classes = {"OutboxDispatcher": OutboxDispatcher, "RestHook": RestHook}
    for label, cls, name in PARTS:
        setattr(classes[cls], name, timed(cpu, label, getattr(classes[cls], name)))
    windows.count_window = timed(cpu, COUNT, windows.count_window)  # a function: looked up where it is used
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.PIPE)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == b"ready"
    system = as_system("bench: the writes and subscriptions of the profile")
    try:
        with bench_database("notify_profile") as url:
            facts = machine_facts(url)
            server = FhirServer(Settings(database_url=url, outbox_dispatcher=False, audit_enabled=False,
                                         base_url="http://localhost/fhir"))
            upgrade(server.engine)
            dispatcher = OutboxDispatcher(server.engine, lanes=1)
            install_outbox_topics(server, dispatcher)

            def handle(method: str, path: str, resource: dict[str, Any]) -> None:
                response = server.handle(FhirRequest(method, path, resource=resource, access=system,
                                                     headers={"content-type": "application/fhir+json"}))
                assert response.status in (200, 201), response.status

            handle("PUT", "Patient/bench", {"resourceType": "Patient", "id": "bench"})
            for i in range(args.subscriptions):
                handle("POST", "Subscription", {
                    "resourceType": "Subscription", "status": "requested", "reason": "bench",
                    "criteria": "Observation?code=http://loinc.org|bench",
                    "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{port}/hook/{i}",
                                "payload": "application/fhir+json"}})
            obs = {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/bench"},
                   "code": {"coding": [{"system": "http://loinc.org", "code": "bench"}]}}
            rows = []
            for label, n in (("warm-up", 5), ("measured", args.n)):
                while dispatcher.run_once():  # handshakes, or what is left
                    pass
                for _ in range(n):
                    handle("POST", "Observation", obs)
                cpu.clear()
                meter = CpuMeter(receiver.pid, url)
                meter.start()
                began, wall = time.process_time(), time.monotonic()
                delivered = 0
                while (k := dispatcher.run_once()):
                    delivered += k
                process, wall = time.process_time() - began, time.monotonic() - wall
                meter.stop()
                log(f"{label}: {delivered} notifications, {process * 1000 / max(delivered, 1):.2f} ms CPU each")
            dispatcher.stop()
            server.engine.dispose()
    finally:
        receiver.terminate()
    per = max(delivered, 1)
    whole, claim, batch, post, writes = (cpu[label] for label, _c, _m in PARTS)
    parts = [(PARTS[1][0], claim), (PARTS[2][0], batch), (PARTS[3][0], post), (COUNT, cpu[COUNT]),
             (PARTS[4][0], writes),
             ("rest of the delivery (handler logic, body, dispatcher)", whole - batch - post - cpu[COUNT] - writes)]
    rows = [[label, f"{value * 1000 / per:.2f}", f"{value / max(process, 1e-9):.0%}"] for label, value in parts]
    rows.append(["**delivering process, total**", f"**{process * 1000 / per:.2f}**", "100%"])
    rows.append(["PostgreSQL backends", f"{meter.postgres * 1000 / per:.2f}", ""])
    rows.append(["receiver process", f"{meter.server * 1000 / per:.2f}", ""])
    body = "\n\n".join([
        "## Where a notification's CPU goes (`bench/profile_notify.py`)",
        facts_markdown(facts),
        f"The outbox dispatcher (one lane) draining {delivered} R4 rest-hook notifications ({args.n} matching "
        f"writes x {args.subscriptions} subscriptions, payload `application/fhir+json`, PUT to a keep-alive "
        f"receiver in its own process) in-process on PostgreSQL; {delivered / max(wall, 1e-9):.0f} notifications/s "
        "wall on this (shared) machine. CPU ms per notification, each part timed with `time.process_time`.",
        table(["part", "CPU ms / notification", "share of the process"], rows),
        "Goal: <= 1.5 ms in the delivering process (issue 21 item 8: 300/s live leaves the writers most of "
        "the interpreter). A lane sends up to 8 notifications of a subscription at once; one statement counts "
        "their attempts (and finishes the window before), the turn's last window is finished at its end.",
    ])
    print(body)
    if not args.quick:
        write_section("notify-profile", body)


if __name__ == "__main__":
    main()
