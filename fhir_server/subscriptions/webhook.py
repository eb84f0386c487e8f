"""The rest-hook HTTP client: the standard library's http.client over keep-alive connections, kept per
delivering thread and endpoint origin, several requests in flight at once.

Why not httpx: its request machinery cost ~1.5 ms CPU per notification (0.75 ms even to an idle receiver),
http.client ~0.2 ms; at hundreds of notifications a second that is the delivering process's main cost.
What httpx gave and this keeps: every request passes the SSRF guard first (fhir_server/outbound.py, so a
name that now resolves to a private address is refused), redirects are not followed (a 3xx is a failure),
one timeout bounds connecting and answering (for a window of requests: all of them together), https with
the system's verified TLS. A connection that sat idle is checked before reuse (the receiver may have
closed it: reusing it would fail a POST it never saw), and dropped after any error. Proxies as httpx took
them: ``HTTP_PROXY``/``HTTPS_PROXY`` (``NO_PROXY`` exempts hosts; https through a CONNECT tunnel).

``exchange`` sends a window of requests on one connection each (written first, answers read after), so a
lane keeps several notifications in flight without a thread per request; the receiver answers them in
parallel. Connections belong to the thread (threading.local), so no lock is taken per request.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

from fhir_server.errors import FhirError

USER_AGENT = "fhir-server rest-hook"
IDLE_PER_ORIGIN = 16  # keep-alive connections kept per origin per thread (beyond: closed after use)
IDLE_PER_THREAD = 64  # and in all per thread: the least recently used origin's are closed first
MAX_ANSWER = 65_536  # bytes of a receiver's answer read; a longer one closes its connection


class WebhookError(Exception):
    """A request that did not succeed: not sent, no answer in time, or not 2xx. Says why, not the URL."""


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes = b""


Origin = tuple[str, str, int]  # scheme, host, port


class Webhook:
    def __init__(self, guard: Callable[[str], None], *, timeout: float = 10.0) -> None:
        """``guard(url)``: raises FhirError when the server may not send there (outbound.check_url)."""
        self.guard = guard
        self.timeout = timeout
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None
        self._proxies = {k: v for k, v in getproxies_environment().items() if k in ("http", "https")}

    def _idle(self) -> dict[Origin, list[http.client.HTTPConnection]]:
        idle: dict[Origin, list[http.client.HTTPConnection]] | None = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = {}
        return idle

    def _connection(self, origin: Origin) -> http.client.HTTPConnection:
        pool = self._idle().get(origin)
        while pool:
            conn = pool.pop()
            sock = conn.sock
            # Readable while idle: the receiver closed it (or sent what nobody asked for): not reusable.
            if sock is not None and not select.select([sock], [], [], 0)[0]:
                return conn
            conn.close()
        scheme, host, port = origin
        proxy = self._proxy(origin)
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            if proxy is not None:  # a CONNECT tunnel through the proxy, TLS with the endpoint inside it
                conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=self.timeout, context=self._tls)
                conn.set_tunnel(host, port)
                return conn
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        return http.client.HTTPConnection(*(proxy or (host, port)), timeout=self.timeout)

    def _proxy(self, origin: Origin) -> tuple[str, int] | None:
        url = self._proxies.get(origin[0])
        if not url or proxy_bypass_environment(origin[1]):
            return None
        parts = urlsplit(url if "://" in url else f"http://{url}")
        return parts.hostname or "", parts.port or 80

    def _keep(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        idle = self._idle()
        pool = idle.pop(origin, [])  # re-inserted last: the dict's order is least recently used first
        idle[origin] = pool
        if len(pool) >= IDLE_PER_ORIGIN:
            conn.close()
            return
        pool.append(conn)
        while sum(len(p) for p in idle.values()) > IDLE_PER_THREAD:  # many endpoints: bound the open sockets
            oldest = next(iter(idle))
            for stale in idle.pop(oldest):
                stale.close()

    def send(self, request: Request) -> None:
        """One request; raises WebhookError unless it was answered 2xx."""
        error = self.exchange([request])[0]
        if error is not None:
            raise error

    def exchange(self, requests: list[Request]) -> list[WebhookError | None]:
        """Send every request (each on its own connection), then read every answer, within one timeout:
        per request None (2xx) or why it failed."""
        results: list[WebhookError | None] = [None] * len(requests)
        started: list[tuple[int, Origin, http.client.HTTPConnection]] = []
        for i, request in enumerate(requests):
            parts = urlsplit(request.url)
            origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            try:
                self.guard(request.url)
            except FhirError as exc:  # the endpoint's host is not one the server may post to
                results[i] = WebhookError(exc.issues[0].diagnostics if exc.issues else "endpoint not allowed")
                continue
            conn = self._connection(origin)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if origin[0] == "http" and self._proxy(origin) is not None:
                target = request.url  # a plain-http proxy is asked for the absolute URL
            headers = {"User-Agent": USER_AGENT, "Accept": "*/*", **request.headers,
                       "Content-Length": str(len(request.body))}
            try:
                conn.request(request.method, target, body=request.body, headers=headers)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                results[i] = WebhookError(f"{type(exc).__name__} sending to the endpoint")
                continue
            started.append((i, origin, conn))
        deadline = time.monotonic() + self.timeout
        for i, origin, conn in started:
            try:
                if conn.sock is not None:  # the window shares one timeout: a hung receiver costs it once
                    conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                response = conn.getresponse()
                response.read(MAX_ANSWER)  # the answer's body means nothing to us: a bounded read
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                results[i] = WebhookError(f"{type(exc).__name__} waiting for the endpoint's answer")
                continue
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout)
            if response.will_close or not response.isclosed():  # closed, or a body longer than we read
                conn.close()
            else:
                self._keep(origin, conn)
            if not 200 <= response.status < 300:
                results[i] = WebhookError(f"The endpoint answered HTTP {response.status}")
        return results

    def close(self) -> None:
        """This thread's connections (others close with their thread or at exit)."""
        for pool in self._idle().values():
            for conn in pool:
                conn.close()
            pool.clear()
