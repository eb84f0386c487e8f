"""A real webhook receiver on loopback for the subscription tests: records every request it gets (POST;
PUT and DELETE: R4 rest-hook with a payload treats the endpoint as a FHIR base)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    method: str = "POST"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    status: int = 200
    # hold(received) -> True: the receiver records the request, then blocks until ``release`` is set.
    hold: Any = None
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json() for r in self.received if r.body]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def restart(self) -> None:
        """Listen again on the same port after ``close`` (a receiver that was down comes back)."""
        self.release.clear()
        self.server = _serve(self, self.server.server_address[1])


def start_receiver() -> Receiver:
    receiver = Receiver(None)  # type: ignore[arg-type]  # the server is made for it just below
    receiver.server = _serve(receiver, 0)
    return receiver


def _serve(receiver: Receiver, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.do_POST()

        def do_DELETE(self) -> None:
            self.do_POST()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            item = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length),
                            self.command)
            with receiver.lock:
                receiver.received.append(item)
            if receiver.hold is not None and receiver.hold(item):
                receiver.holding.set()
                receiver.release.wait(30)
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
