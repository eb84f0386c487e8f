"""The rest-hook client (subscriptions/webhook.py) against real receivers on loopback: keep-alive reuse, a
connection the receiver closed while idle, the SSRF guard, non-2xx, and one timeout for a whole window."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fhir_server.errors import FORBIDDEN, FhirError
from fhir_server.subscriptions.webhook import Request, Webhook, WebhookError


class _Receiver:
    def __init__(self, *, keep_alive: bool = True, status: int = 200) -> None:
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                receiver.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append((self.command, self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.close()


def _open(_url: str) -> None:
    pass


def test_requests_reuse_one_keep_alive_connection_and_carry_method_path_headers_body(receiver: _Receiver) -> None:
    hook = Webhook(_open, timeout=5)
    for i in range(5):
        hook.send(Request("PUT", receiver.url(f"/base/Observation/{i}"), {"Authorization": "Bearer x",
                                                                          "Content-Type": "application/fhir+json"},
                          b'{"resourceType":"Observation"}'))
    assert receiver.connections == 1
    method, path, headers, body = receiver.requests[-1]
    assert (method, path, body) == ("PUT", "/base/Observation/4", b'{"resourceType":"Observation"}')
    assert headers["Authorization"] == "Bearer x" and headers["Content-Type"] == "application/fhir+json"


def test_a_window_goes_out_on_several_connections_and_each_answer_is_its_own(receiver: _Receiver) -> None:
    failing = _Receiver(status=503)
    try:
        hook = Webhook(_open, timeout=5)
        errors = hook.exchange([Request("POST", receiver.url(), {}), Request("POST", failing.url(), {}),
                                Request("POST", receiver.url(), {})])
        assert errors[0] is None and errors[2] is None
        assert isinstance(errors[1], WebhookError) and "HTTP 503" in str(errors[1])
        assert receiver.connections == 2  # two in flight to it at once
    finally:
        failing.close()


def test_a_connection_the_receiver_closed_while_idle_is_not_reused(receiver: _Receiver) -> None:
    hook = Webhook(_open, timeout=5)
    hook.send(Request("POST", receiver.url(), {}))
    [conns] = hook._idle().values()
    assert conns[0].sock is not None
    conns[0].sock.shutdown(socket.SHUT_RD)  # what a receiver's idle timeout looks like from here: readable
    hook.send(Request("POST", receiver.url(), {}))
    assert len(receiver.requests) == 2


def test_the_guard_refuses_before_anything_is_sent(receiver: _Receiver) -> None:
    def guard(_url: str) -> None:
        raise FhirError(403, FORBIDDEN, "The URL's host is a loopback address", ("Subscription.channel.endpoint",))

    with pytest.raises(WebhookError, match="loopback"):
        Webhook(guard, timeout=5).send(Request("POST", receiver.url(), {}))
    assert receiver.requests == []


def test_a_window_to_a_receiver_that_never_answers_costs_one_timeout() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel does) and never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        began = time.monotonic()
        errors = Webhook(_open, timeout=0.5).exchange([Request("POST", url, {}) for _ in range(4)])
        assert all(isinstance(e, WebhookError) for e in errors)
        assert time.monotonic() - began < 1.5  # not 4 x 0.5 s
    finally:
        silent.close()


def test_an_http_proxy_from_the_environment_is_asked_for_the_absolute_url(
        receiver: _Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", receiver.url(""))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    Webhook(_open, timeout=5).send(Request("POST", "http://receiver.example/hook", {}))
    assert receiver.requests[0][1] == "http://receiver.example/hook"
