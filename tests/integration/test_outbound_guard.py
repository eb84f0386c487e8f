"""Requests the server makes for callers (subscription rest-hooks, $import URLs) never reach loopback,
private or link-local addresses outside local development, unless the host is allowed by name: real HTTP
server, both databases, and a real receiver on loopback that must receive nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import orjson
import pytest

from fhir_server.config import Settings
from fhir_server.errors import FhirError
from fhir_server.outbound import check_url
from tests.conftest import Backend
from tests.integration.test_auth_support import Smart, smart_server

JSON = {"Content-Type": "application/fhir+json"}


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/x",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]:80/x",
                                 "http://[::ffff:127.0.0.1]/x", "http://0.0.0.0/x"])
def test_non_public_hosts_are_refused_outside_local(url: str) -> None:
    settings = Settings(environment="test", database_url="sqlite://")
    with pytest.raises(FhirError) as err:
        check_url(url, settings, "Subscription.channel.endpoint", status=422)
    assert err.value.status == 422 and err.value.issues[0].expression == ("Subscription.channel.endpoint",)
    check_url(url, Settings(environment="local", database_url="sqlite://"), "x")  # development: allowed
    allowed = settings.model_copy(update={"outbound_allowed_hosts": [str(urlsplit(url).hostname).upper()]})
    check_url(url, allowed, "x")  # listed by name: allowed


def test_public_addresses_and_schemes() -> None:
    settings = Settings(environment="test", database_url="sqlite://")
    check_url("https://93.184.216.34/hook", settings, "x")
    with pytest.raises(FhirError) as err:
        check_url("ftp://93.184.216.34/x", settings, "input.url")
    assert err.value.status == 400 and err.value.issues[0].expression == ("input.url",)


class _Receiver(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def guarded(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend, outbound_block_private=True)


def test_a_subscription_to_a_loopback_endpoint_is_refused(guarded: Smart, receiver: str) -> None:
    token = guarded.system_token("system/*.cruds")
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "r", "criteria": "Observation?code=x",
           "channel": {"type": "rest-hook", "endpoint": receiver + "/hook", "payload": "application/fhir+json"}}
    r = guarded.fhir("POST", "Subscription", token, content=orjson.dumps(sub), headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Subscription.channel.endpoint"]
    assert guarded.fhir("GET", "Subscription", token).json().get("total", 0) == 0
    assert _Receiver.hits == []  # not even a handshake went out


def test_an_import_from_a_loopback_url_is_refused_at_kick_off(guarded: Smart, receiver: str) -> None:
    token = guarded.system_token("system/*.cruds")
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
        {"name": "input", "part": [{"name": "type", "valueCode": "Patient"},
                                   {"name": "url", "valueUrl": receiver + "/patients.ndjson"}]}]}
    r = guarded.fhir("POST", "$import", token, content=orjson.dumps(params),
                     headers={**JSON, "Prefer": "respond-async"})
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["input.url"]
    assert _Receiver.hits == []
