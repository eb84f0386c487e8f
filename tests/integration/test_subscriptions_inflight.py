"""Several notifications of one subscription in flight at once (issue 21 item 8), order kept where it
matters: an R4 full-resource notification updates its focus resource (PUT), so one resource's versions
reach the endpoint in order; a Backport subscription's event numbers go one at a time, in order. Through the
live server and a real receiver on loopback that answers slowly enough for requests to overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, update

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import OutboxDispatcher
from tests.conftest import LiveServer, wait_until
from tests.integration.test_subscriptions import dispatcher, observation, status, subscription
from tests.integration.test_subscriptions_backport import backport, event_numbers, params, topic

ANSWER_SECONDS = 0.05  # each answer waits this long: what a window sends together overlaps


@dataclass
class SlowReceiver:
    """Records (method, body) in arrival order and the most requests it had in flight at once."""

    arrived: list[tuple[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def slow() -> Iterator[SlowReceiver]:
    receiver = SlowReceiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.arrived.append((self.command, orjson.loads(body) if body else None))
                receiver.in_flight += 1
                receiver.most = max(receiver.most, receiver.in_flight)
            time.sleep(ANSWER_SECONDS)  # the receiver's own work, not a test wait
            with receiver.lock:
                receiver.in_flight -= 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64  # a window opens several connections at once (socketserver's 5 drops SYNs)

    receiver.server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _postgres_only(api: LiveServer) -> None:
    if api.backend.name == "sqlite":
        pytest.skip("concurrency of delivery is measured on PostgreSQL (SQLite's single writer serialises it)")


def test_r4_payload_notifications_overlap_but_each_resource_s_versions_arrive_in_order(
        api: LiveServer, slow: SlowReceiver) -> None:
    _postgres_only(api)
    sid = subscription(api, slow.url, "Observation?status=final", payload="application/fhir+json")["id"]
    d = dispatcher(api)
    d.run_once()  # the handshake
    assert status(api, sid)["status"] == "active"
    ids = [observation(api, "1-1", "P1", rid=f"inflight-{i}")["id"] for i in range(4)]
    for value in (2.0, 3.0, 4.0):  # each resource updated: versions 2..4, interleaved with the others'
        for rid in ids:
            observation(api, "1-1", "P1", value, rid=rid)
    wait_until(lambda: d.run_once() >= 0 and sum(1 for m, _b in slow.arrived if m == "PUT") >= 16, 30,
               "every notification")
    puts = [body for method, body in slow.arrived if method == "PUT"]
    assert len(puts) == 16  # each once
    for rid in ids:
        assert [int(b["meta"]["versionId"]) for b in puts if b["id"] == rid] == [1, 2, 3, 4]
    assert slow.most > 1  # several notifications of the one subscription were in flight together


def test_backport_event_numbers_go_one_at_a_time_in_order(api: LiveServer, slow: SlowReceiver) -> None:
    _postgres_only(api)
    topic(api)
    response = backport(api, slow.url)
    assert response.status_code == 201, response.text
    d = dispatcher(api)
    d.run_once()  # the handshake
    for i in range(8):
        observation(api, "1-1", "P1", float(i))
    wait_until(lambda: d.run_once() >= 0 and len(_numbers(slow)) >= 8, 30, "every notification")
    assert _numbers(slow) == list(range(1, 9))
    assert slow.most == 1


def _numbers(slow: SlowReceiver) -> list[int]:
    with slow.lock:
        bodies = [body for _m, body in slow.arrived if body is not None]
    return [n for b in bodies if str(params(b)["type"][0]) == "event-notification" for n in event_numbers(b)]


def test_the_lease_heartbeat_never_waits_for_a_row_a_lane_has_locked(api: LiveServer) -> None:
    """A lane's statement locks several of its rows at once; the heartbeat renewing every held row used to
    wait for them, and the two deadlocked (PostgreSQL aborted one a second later, rows stuck held)."""
    _postgres_only(api)
    engine = api.backend.engine
    d = OutboxDispatcher(engine, lanes=1)
    d.register("test-heartbeat-skip", lambda _key, _payload: None)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(OUTBOX), [{"topic": "test-heartbeat-skip", "key": f"k{i}", "payload": {},
                                       "status": "pending", "attempts": 0, "max_attempts": 3, "next_attempt_at": now,
                                       "created_at": now} for i in range(2)])
    claimed = d.claim()
    assert len(claimed) == 2
    renewed: list[int] = []
    with engine.connect() as conn, conn.begin():  # what a lane's count holds until its commit
        conn.execute(update(OUTBOX).where(OUTBOX.c.pk == claimed[0].pk).values(attempts=OUTBOX.c.attempts))
        beat = threading.Thread(target=lambda: renewed.append(d.renew()), daemon=True)
        beat.start()
        beat.join(timeout=5)
        assert not beat.is_alive(), "the heartbeat waited for a row a lane holds"
    assert renewed == [1]  # the other row's lease was renewed
    d.release(claimed)
    d.stop()
