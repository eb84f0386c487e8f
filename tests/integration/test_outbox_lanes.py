"""The outbox dispatcher's lanes and attempt counting, in process, on SQLite and PostgreSQL: partitions are
delivered in parallel, each in outbox order; a failure hands the rest of its partition back unattempted; an
attempt is counted once per delivery, when the handler says its request leaves (``count_attempt``)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from fhir_server.storage.models import OUTBOX
from fhir_server.storage.outbox import OutboxDispatcher, count_attempt
from fhir_server.storage.outbox_lanes import Lanes
from tests.conftest import SYSTEM, LiveServer, wait_until


def _enqueue(api: LiveServer, rows: list[tuple[str, int]]) -> None:
    def work(repo: Any) -> None:
        for part, n in rows:
            repo.enqueue("lane-topic", f"{part}/{n}", {"part": part, "n": n})

    api.fhir.uow.run(work, write=True, access=SYSTEM)


def _rows(api: LiveServer) -> dict[str, tuple[str, int]]:
    with api.backend.engine.connect() as conn:
        return {r.key: (r.status, r.attempts) for r in conn.execute(select(OUTBOX).order_by(OUTBOX.c.pk))}


def _dispatcher(api: LiveServer, handler: Any) -> OutboxDispatcher:
    d = OutboxDispatcher(api.backend.engine, backoff_base=0.001, lanes=4)
    d.register("lane-topic", handler, partition=lambda _key, payload: str(payload["part"]))
    return d


def test_partitions_go_in_parallel_and_each_in_order(api: LiveServer) -> None:
    _enqueue(api, [(part, n) for n in range(1, 6) for part in ("slow", "fast", "other")])
    got: list[tuple[str, int]] = []
    lock = threading.Lock()
    fast_done = threading.Event()
    waited: list[bool] = []

    def handler(_key: str, payload: dict[str, Any]) -> None:
        with lock:
            got.append((payload["part"], payload["n"]))
            if payload["part"] == "fast" and payload["n"] == 5:
                fast_done.set()
        if payload["part"] == "slow" and payload["n"] == 1:
            waited.append(fast_done.wait(30))  # only another lane can finish "fast" meanwhile

    d = _dispatcher(api, handler)
    try:
        assert d.run_once() == 15
    finally:
        d.stop()
    assert waited == [True]
    for part in ("slow", "fast", "other"):
        assert [n for p, n in got if p == part] == [1, 2, 3, 4, 5]
    assert all(row == ("done", 1) for row in _rows(api).values())


def test_a_failure_hands_the_rest_of_its_partition_back_unattempted(api: LiveServer) -> None:
    _enqueue(api, [("a", n) for n in range(1, 5)] + [("b", 1)])
    calls: list[str] = []

    def handler(key: str, _payload: dict[str, Any]) -> None:
        calls.append(key)
        count_attempt()
        count_attempt()  # twice in one delivery: still one attempt
        if key == "a/2" and calls.count(key) == 1:
            raise ConnectionError("receiver down")

    d = _dispatcher(api, handler)
    d.run_once()
    rows = _rows(api)
    assert rows["a/1"] == ("done", 1) and rows["b/1"] == ("done", 1)
    assert rows["a/2"] == ("pending", 1)
    assert rows["a/3"] == ("pending", 0) and rows["a/4"] == ("pending", 0)  # handed back, never sent
    wait_until(lambda: (d.run_once(), _rows(api)["a/4"][0])[1] == "done", 10, "the rest of partition a")
    assert [c for c in calls if c.startswith("a/")] == ["a/1", "a/2", "a/2", "a/3", "a/4"]
    assert _rows(api) == {"a/1": ("done", 1), "a/2": ("done", 2), "a/3": ("done", 1), "a/4": ("done", 1),
                          "b/1": ("done", 1)}


def test_a_row_held_by_one_dispatcher_is_not_claimed_by_another_while_its_heartbeat_runs(api: LiveServer) -> None:
    _enqueue(api, [("a", 1)])
    release = threading.Event()
    entered = threading.Event()

    def slow(_key: str, _payload: dict[str, Any]) -> None:
        entered.set()
        release.wait(30)

    lease = timedelta(milliseconds=600)  # renewed every 200 ms: a busy machine's stalls stay well inside it
    first = OutboxDispatcher(api.backend.engine, lease=lease)
    first.register("lane-topic", slow)
    second = OutboxDispatcher(api.backend.engine, lease=lease)
    taken: list[str] = []
    second.register("lane-topic", lambda key, _p: taken.append(key))
    runner = threading.Thread(target=first.run_once)
    runner.start()
    try:
        assert entered.wait(30)
        with api.backend.engine.connect() as conn:
            claimed_until = conn.execute(select(OUTBOX.c.next_attempt_at)).scalar_one()

        # Polled until the lease has been renewed well past several of its own lengths: never claimable.
        def renewed() -> bool:
            assert second.run_once() == 0
            with api.backend.engine.connect() as conn:
                return bool(conn.execute(select(OUTBOX.c.next_attempt_at)).scalar_one()
                            > claimed_until + 4 * lease)

        wait_until(renewed, 30, "the lease to be renewed")
    finally:
        release.set()
        runner.join(30)
    assert taken == [] and _rows(api) == {"a/1": ("done", 1)}


def test_a_dispatcher_that_lost_its_lease_sends_nothing(api: LiveServer) -> None:
    _enqueue(api, [("a", 1)])
    sent: list[str] = []

    def handler(key: str, _payload: dict[str, Any]) -> None:
        count_attempt()  # as the request leaves
        sent.append(key)

    stale = OutboxDispatcher(api.backend.engine, lease=timedelta(milliseconds=200))
    stale.register("lane-topic", handler)
    [item] = stale.claim()
    stale.stop(release=False)  # frozen (SIGSTOP, a long pause): its heartbeat stops, the lease lapses
    fresh = OutboxDispatcher(api.backend.engine)
    fresh.register("lane-topic", handler)
    wait_until(lambda: fresh.run_once() == 1, 10, "the row taken over after the lease")
    assert stale.deliver(item) is False  # thawed: its request would be a second delivery, so none leaves
    assert sent == ["a/1"] and _rows(api) == {"a/1": ("done", 1)}


def test_the_running_loop_keeps_other_partitions_flowing_while_one_endpoint_hangs(api: LiveServer) -> None:
    _enqueue(api, [("slow", 1), ("slow", 2)])
    release = threading.Event()
    entered = threading.Event()
    got: list[str] = []

    def handler(key: str, _payload: dict[str, Any]) -> None:
        if key == "slow/1":
            entered.set()
            release.wait(30)
        got.append(key)

    d = _dispatcher(api, handler)
    d.start(poll_seconds=0.05)
    try:
        assert entered.wait(30)
        _enqueue(api, [("fast", 1), ("fast", 2), ("slow", 3)])  # written while slow/1 hangs
        wait_until(lambda: got == ["fast/1", "fast/2"], 30, "the other partition, while the first one hangs")
        release.set()
        wait_until(lambda: len(got) == 5, 30, "the rest of the slow partition")
    finally:
        release.set()
        d.stop()
    assert [k for k in got if k.startswith("slow/")] == ["slow/1", "slow/2", "slow/3"]
    assert all(row == ("done", 1) for row in _rows(api).values())


def test_fifty_tenants_share_one_set_of_lanes_and_a_busy_one_does_not_starve_the_rest(api: LiveServer) -> None:
    """Every tenant's dispatcher hands its partitions to the process's one ``Lanes`` (FHIR_OUTBOX_LANES
    threads, one heartbeat and one scheduler, whatever the number of tenants); a partition queues again after a turn, so
    a backlog of one tenant does not hold back the others' rows."""
    if api.backend.name == "sqlite":
        pytest.skip("the lanes are the same on both databases: once is enough for CI's budget")
    tenants, lanes, hog_rows = 50, 4, 4 * 25
    pool = Lanes(lanes)
    quiet_done = threading.Event()
    delivered: dict[str, int] = {}
    lock = threading.Lock()
    hog_when_quiet_done: list[int] = []

    def handler(_key: str, payload: dict[str, Any]) -> None:
        with lock:
            delivered[payload["topic"]] = delivered.get(payload["topic"], 0) + 1
            if len(delivered) == tenants + 1 and not quiet_done.is_set() and all(
                    n == 1 for t, n in delivered.items() if t != "hog"):
                hog_when_quiet_done.append(delivered.get("hog", 0))
                quiet_done.set()
        if payload["topic"] == "hog":
            quiet_done.wait(1.0)  # the busy tenant's endpoint is slow until the quiet ones were served

    def work(repo: Any) -> None:
        for n in range(hog_rows):
            repo.enqueue("hog", f"hog/{n}", {"topic": "hog", "part": n % 4})
        for i in range(tenants):
            repo.enqueue(f"quiet-{i}", f"quiet-{i}/1", {"topic": f"quiet-{i}", "part": 0})

    dispatchers = []
    for topic in ["hog", *(f"quiet-{i}" for i in range(tenants))]:
        d = OutboxDispatcher(api.backend.engine, lanes=pool)
        d.register(topic, handler, partition=lambda _key, payload: str(payload["part"]))
        dispatchers.append(d)
    api.fhir.uow.run(work, write=True, access=SYSTEM)
    before = set(threading.enumerate())
    try:
        dispatchers[0].start(0.05)
        wait_until(lambda: delivered.get("hog", 0) > 0, 30, "the busy tenant to start")
        for d in dispatchers[1:]:
            d.start(0.05)
        wait_until(quiet_done.is_set, 60, "every quiet tenant's row")
        names = [t.name for t in threading.enumerate() if t not in before]  # (other tests' servers have lanes)
        assert sum(n.startswith("outbox-lane") for n in names) <= lanes
        assert sum(n == "outbox-heartbeat" for n in names) <= 1
        assert sum(n == "outbox-scheduler" for n in names) <= 1  # one thread polls every tenant's outbox
        assert not [n for n in names if n == "outbox-dispatcher"]  # no polling loop per tenant
        wait_until(lambda: delivered.get("hog") == hog_rows, 60, "the busy tenant's backlog")
    finally:
        for d in dispatchers:
            d.stop()
        pool.shutdown()
    # served while the backlog was still mostly waiting
    assert hog_when_quiet_done[0] < hog_rows // 2, hog_when_quiet_done
    assert all(status == "done" for status, _attempts in _rows(api).values())
