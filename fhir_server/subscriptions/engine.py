"""Matching committed changes to active subscriptions, in the change's own transaction (write hooks).

- BEFORE_VALIDATE on Subscription: a client's new or changed subscription becomes ``requested`` (the
  server alone makes it ``active`` after a handshake, or ``error``); websocket ones start ``active``.
- BEFORE_COMMIT on Subscription: the resource is checked (criteria, channel, topic: 422 naming the
  element), the author's access recorded, a handshake queued on the outbox, the cache generation replaced.
  Edits lose nothing (issue 21 item 1): a subscription that was live keeps matching while its new channel
  awaits the handshake (or after that failed); its notifications, queued ones included, wait as ``held``
  outbox rows until a handshake succeeds, then go to the channel as it then is.
- BEFORE_COMMIT on any other write: the active subscriptions for that type (cached per process, reloaded
  when the generation token changes) are tested against the changed resource only: one indexed query
  restricted to its id, never a re-run of the search. A match takes the next event number (an UPDATE of
  the subscription's counter row, which serialises concurrent writers on that subscription), writes an
  event row, and for rest-hook enqueues the notification. A deletion is matched by a hook registered
  first, while the index still holds the deleted version's rows.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, bindparam, insert, select, update

from fhir_server.auth.stored import NO_ACCESS, StoredAccess, dump_access, load_access
from fhir_server.errors import FhirError
from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.rest.request import REQUEST_BASE_URL
from fhir_server.search.access import refuse_masked_criteria
from fhir_server.search.parser import AnyCriterion, parse_query
from fhir_server.search.registry import Registry
from fhir_server.search.sql import predicate
from fhir_server.search.sql.common import SqlContext
from fhir_server.storage.access import as_system
from fhir_server.storage.generation import SUBSCRIPTIONS, Generation
from fhir_server.storage.models import OUTBOX, RESOURCE
from fhir_server.storage.repository import Repository, Version
from fhir_server.subscriptions import spec as specs
from fhir_server.subscriptions.spec import SubscriptionSpec, Topic, Trigger
from fhir_server.subscriptions.tables import EVENT, STATE

if TYPE_CHECKING:
    from fhir_server.hooks import Hooks

HANDSHAKE_TOPIC = "subscription-handshake"
NOTIFY_TOPIC = "subscription-notification"
# criteria tested, the statement testing them (a select), which of its columns answers each
_MatchStatement = tuple[list[tuple[AnyCriterion, ...]], Any, list[int]]
MATCH_CHUNK = 12  # criteria tested in one query (a longer one misses psycopg's statement cache)
HEARTBEAT_TOPIC = "subscription-heartbeat"
HANDSHAKE_ATTEMPTS = 5  # with the outbox's backoff: an endpoint down for ~15 s fails no handshake
STATUS_TOPIC = "subscription-status"  # recompute a status after an operator discarded dead notifications
LIVE = ("active", "error")  # error: the endpoint is failing, notifications keep queueing and retrying
HELD = "held"  # outbox status of a notification waiting for its subscription's handshake (never claimed)

# Set while the server itself records a status (active/error): such writes are not a client's change.
SERVER_WRITE: ContextVar[bool] = ContextVar("subscription_server_write", default=False)
# Set while the server records ``active`` because the current version's handshake succeeded: the one write
# that verifies a channel (a later success of some notification never does).
HANDSHAKE_OK: ContextVar[bool] = ContextVar("subscription_handshake_ok", default=False)


def notification_key(subscription_id: str, number: int | None = None) -> str:
    """The outbox key of a notification (``None``: the LIKE pattern of all the subscription's). FHIR ids
    hold no ``%`` or ``_``."""
    return f"Subscription/{subscription_id}/event/{'%' if number is None else number}"


def release_held(conn: Connection, subscription_id: str) -> int:
    """A handshake succeeded: the subscription's held notifications are due now (to the channel as it is)."""
    return conn.execute(update(OUTBOX).where(
        OUTBOX.c.status == HELD, OUTBOX.c.topic == NOTIFY_TOPIC, OUTBOX.c.key.like(notification_key(subscription_id)))
        .values(status="pending", next_attempt_at=datetime.now(UTC))).rowcount


def hold_pending(conn: Connection, subscription_id: str) -> int:
    """The channel changed (or was switched off): queued notifications wait for the next handshake instead of
    going to an endpoint not yet verified. Rows in flight are left to their handler, which holds them too."""
    return conn.execute(update(OUTBOX).where(
        OUTBOX.c.status == "pending", OUTBOX.c.topic == NOTIFY_TOPIC,
        OUTBOX.c.key.like(notification_key(subscription_id)))
        .values(status=HELD, last_error="waiting for the subscription's handshake")).rowcount


@dataclass(frozen=True)
class Rule:
    spec: SubscriptionSpec
    trigger: Trigger
    filters: tuple[AnyCriterion, ...]  # the subscription's own criteria
    current: tuple[AnyCriterion, ...] | None  # the topic's queryCriteria.current
    previous: tuple[AnyCriterion, ...] | None  # the topic's queryCriteria.previous
    author: StoredAccess  # who created or last changed the subscription: told only of what they may read


def combine(previous: bool | None, current: bool | None, require_both: bool) -> bool:
    """SubscriptionTopic.resourceTrigger.queryCriteria: either test passing will do, unless requireBoth."""
    tests = [t for t in (previous, current) if t is not None]
    if not tests:
        return True
    return all(tests) if require_both else any(tests)


def schedule_heartbeat(conn: Connection, subscription_id: str, version: int, period: int) -> None:
    """The next link of a heartbeat chain: an outbox row due in ``period`` seconds. Each active version of a
    subscription starts one chain; any later version ends it (its handler sees a newer version)."""
    now = datetime.now(UTC)
    due = now + timedelta(seconds=period)
    conn.execute(insert(OUTBOX).values(
        topic=HEARTBEAT_TOPIC, key=f"Subscription/{subscription_id}/_history/{version}/heartbeat/{due.timestamp():.0f}",
        payload={"subscription": subscription_id, "version": version}, status="pending", attempts=0,
        max_attempts=3, next_attempt_at=due, created_at=now))


def load_topics(repo: Repository) -> dict[str, Topic]:
    system, code = specs.TOPIC_CODE
    # Topics are definitions, the same for every writer: not found through whoever's write loads the cache.
    with repo.acting_as(as_system("SubscriptionTopic definitions")):
        ids = repo.finder.find_ids(repo, "Basic", [("code", f"{system}|{code}")], limit=10000)
    out: dict[str, Topic] = {}
    if ids:
        rows = repo.execute(select(RESOURCE.c.content).where(RESOURCE.c.resource_type == "Basic",
                                                             RESOURCE.c.id.in_(ids)))
        for row in rows:
            topic = specs.parse_topic(row.content or {})
            if topic is not None:
                out[topic.url] = topic
    return out


class SubscriptionEngine:
    def __init__(self, registry: Registry, base_url: str = "") -> None:
        self.registry = registry
        # Criteria are tested in SQL as the server; each rule's author is checked on the resource itself (_match).
        self.ctx = SqlContext(registry, base_url, access=as_system("subscription matching (authors checked apart)"))
        # (resource type, criteria ids) -> (those criteria, the statement testing them, column per criteria)
        self._match_statements: dict[tuple[str, tuple[int, ...]], _MatchStatement] = {}
        self.base_url = base_url
        self._lock = threading.Lock()
        self._generation: str | None = "unloaded"
        self._rules: dict[str, list[Rule]] = {}
        self._tokens = Generation(SUBSCRIPTIONS)  # replaced by every Subscription (or topic) write
        # id(update event) -> {id(rule): previous criteria held}, from the first hook to the last
        self._before: dict[int, dict[int, bool]] = {}

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_VALIDATE, self.before_validate)
        hooks.register(HookPoint.BEFORE_COMMIT, self.match_before, first=True)
        hooks.register(HookPoint.BEFORE_COMMIT, self.before_commit)

    # --- Subscription writes ---------------------------------------------------------------------------

    def before_validate(self, event: WriteEvent, _repo: Repository | None) -> None:
        res = event.resource
        if event.resource_type != "Subscription" or not isinstance(res, dict) or SERVER_WRITE.get():
            return
        status = res.get("status")
        prev = event.previous.content if event.previous is not None and not event.previous.deleted else None
        if status == "error" and (prev is None or prev.get("status") != "error"):  # sending it back is fine
            raise specs.invalid("Only the server sets a subscription's status to error", "Subscription.status")
        changed = prev is None or prev.get("status") not in LIVE or any(
            prev.get(k) != res.get(k) for k in ("criteria", "_criteria", "channel"))
        if status == "active" and prev is not None and prev.get("status") != "active":
            changed = True  # only the server makes a subscription active (after a handshake)
        if status in ("requested", "active", "error") and changed:  # error sent back with a new channel too
            channel = res.get("channel")
            websocket = isinstance(channel, dict) and channel.get("type") == "websocket"
            new = {**res, "status": "active" if websocket else "requested"}
            new.pop("error", None)
            event.resource = new

    def _subscription_written(self, event: WriteEvent, repo: Repository) -> None:
        self.bump(repo)
        if event.resource is None and event.resource_id is not None:  # deleted: nobody left to tell
            repo.execute(update(OUTBOX).where(
                OUTBOX.c.status.in_((HELD, "pending")), OUTBOX.c.topic == NOTIFY_TOPIC,
                OUTBOX.c.key.like(notification_key(event.resource_id)))
                .values(status="done", last_error="the subscription was deleted"))
        if event.resource is None or event.resource_id is None or event.version is None:
            return
        sub = specs.parse(event.resource)
        rules = self.compile(sub, load_topics(repo) if sub.backport else {}, NO_ACCESS, check=True)
        for rule in rules:  # auth: the subscriber's criteria may not test what its role's mask hides
            refuse_masked_criteria(repo.access, rule.trigger.resource_type, rule.filters)
        del rules
        sid = event.resource_id
        # The base URL the client wrote it through: its notifications' fullUrls and references are absolute
        # with it (FHIR_BASE_URL, when set, wins at delivery). The server's own status writes keep the client's.
        base = REQUEST_BASE_URL.get() or None
        if repo.execute(select(STATE.c.subscription_id).where(STATE.c.subscription_id == sid)).first() is None:
            repo.execute(insert(STATE).values(subscription_id=sid, events=0, author=dump_access(repo.access),
                                              activated=sub.status == "active", verified=sub.status == "active",
                                              base_url=base))
        elif not SERVER_WRITE.get():
            changes: dict[str, object] = {"author": dump_access(repo.access)}
            if base:
                changes["base_url"] = base
            repo.execute(update(STATE).where(STATE.c.subscription_id == sid).values(**changes))
        if sub.status == "active" and (sub.channel_type == "websocket" or HANDSHAKE_OK.get()):
            # The state row first: its lock orders this against writers recording events (_record).
            repo.execute(update(STATE).where(STATE.c.subscription_id == sid).values(activated=True, verified=True))
            release_held(repo.conn, sid)
        elif sub.status in ("requested", "off"):  # a new handshake must succeed before anything is sent
            repo.execute(update(STATE).where(STATE.c.subscription_id == sid).values(verified=False))
            hold_pending(repo.conn, sid)
        if sub.status == "active" and sub.backport and sub.heartbeat and sub.channel_type == "rest-hook":
            schedule_heartbeat(repo.conn, sid, event.version.version_id, sub.heartbeat)
        if sub.status == "requested" and sub.channel_type == "rest-hook":
            version = event.version.version_id
            repo.enqueue(HANDSHAKE_TOPIC, f"Subscription/{sid}/_history/{version}/handshake",
                         {"subscription": sid, "version": version}, max_attempts=HANDSHAKE_ATTEMPTS)

    def compile(self, sub: SubscriptionSpec, topics: dict[str, Topic], author: StoredAccess, *,
                check: bool = False) -> list[Rule]:
        """Rules for one subscription; ``check``: raise 422 for what cannot work (unknown topic/params)."""
        topic = topics.get(sub.topic) if sub.topic else None
        if check and sub.backport and topic is None:
            raise specs.invalid(f"No SubscriptionTopic with url '{sub.topic}' is known here", "Subscription.criteria")
        if check and topic is not None:
            known = {t.resource_type for t in topic.triggers}
            for i, (rtype, _params) in enumerate(sub.filters):
                if rtype not in known:
                    raise specs.invalid(f"Topic {topic.url} has no trigger for {rtype}",
                                        f"Subscription.criteria.extension[{i}]")
        rules = []
        for trig in specs.triggers(sub, topic):
            parsed = []
            for params, element in ((trig.filters, "Subscription.criteria" + (".extension" if sub.backport else "")),
                                    (trig.params, "SubscriptionTopic queryCriteria.current"),
                                    (trig.previous, "SubscriptionTopic queryCriteria.previous")):
                query = parse_query(self.registry, trig.resource_type, list(params or ()), base_url=self.base_url)
                if query.unknown or query.control:
                    if check:
                        name, reason = (query.unknown or [(query.control[0][0], "is not a search criterion")])[0]
                        raise specs.invalid(f"Criteria parameter '{name}': {reason}", element)
                    break
                parsed.append(tuple(query.criteria))
            else:
                rules.append(Rule(sub, trig, parsed[0], parsed[1] if trig.params else None,
                                  parsed[2] if trig.previous is not None else None, author))
        return rules

    def bump(self, repo: Repository) -> None:
        self._tokens.bump(repo)

    # --- the cache of live subscriptions ---------------------------------------------------------------

    def rules(self, repo: Repository) -> dict[str, list[Rule]]:
        token = self._tokens.token(repo)  # once per transaction: a 500-entry Bundle asks once
        if token == self._generation:
            return self._rules
        with self._lock:
            rules: dict[str, list[Rule]] = {}
            topics = load_topics(repo)
            state = {r.subscription_id: r for r in repo.execute(select(STATE.c.subscription_id, STATE.c.author,
                                                                       STATE.c.activated))}
            rows = repo.execute(select(RESOURCE.c.id, RESOURCE.c.content).where(
                RESOURCE.c.resource_type == "Subscription", RESOURCE.c.deleted.is_(False)).order_by(RESOURCE.c.id))
            for row in rows:
                status, known = (row.content or {}).get("status"), state.get(row.id)
                if status != "active" and not (status in ("error", "requested") and known is not None
                                               and known.activated):
                    continue  # off, or never live yet (its first handshake pending or failed)
                try:
                    sub = specs.parse(row.content)
                except FhirError:
                    continue  # stored before a rule changed; it cannot fire
                for rule in self.compile(sub, topics, load_access(known.author if known is not None else None)):
                    rules.setdefault(rule.trigger.resource_type, []).append(rule)
            self._rules, self._generation = rules, token
            return rules

    # --- matching changes ------------------------------------------------------------------------------

    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        if repo is None or event.resource_id is None or event.version is None:
            return
        if event.resource_type == "Subscription":
            self._subscription_written(event, repo)
            return
        if event.resource_type == "Basic" and (specs.parse_topic(event.resource or {}) is not None or (
                event.previous is not None and specs.parse_topic(event.previous.content or {}) is not None)):
            self.bump(repo)
        if event.resource is not None:
            interaction = "create" if event.version.version_id == 1 or event.previous is None \
                or event.previous.deleted else "update"
            self._match(repo, event, event.version, interaction)

    def match_before(self, event: WriteEvent, repo: Repository | None) -> None:
        """Registered first: the index still holds the replaced version's rows. A deletion is decided here
        whole; an update only has its ``previous`` criteria tested, for ``before_commit`` to use."""
        if repo is None or event.previous is None or event.previous.deleted or event.version is None \
                or event.resource_id is None or event.resource_type == "Subscription":
            return
        if event.interaction == "delete":
            self._match(repo, event, event.previous, "delete")
            return
        candidates = self.rules(repo).get(event.resource_type)
        if candidates and any(rule.previous is not None for rule in candidates):
            repo.flush()
            if len(self._before) > 10000:  # entries of transactions that failed between the two hooks
                self._before.clear()
            previous = {id(rule): rule.previous for rule in candidates if rule.previous is not None}
            passed = self._matches_all(repo, event.resource_type, event.resource_id,
                                       {id(criteria): criteria for criteria in previous.values()})
            self._before[id(event)] = {key: passed[id(criteria)] for key, criteria in previous.items()}

    def _match(self, repo: Repository, event: WriteEvent, seen: Version, interaction: str) -> None:
        candidates = self.rules(repo).get(event.resource_type)
        before = self._before.pop(id(event), {})
        if not candidates:
            return
        fired: dict[str, SubscriptionSpec] = {}
        seen_at = event.version.last_updated if event.version is not None else datetime.now(UTC)
        rtype, rid = event.resource_type, seen.id
        eligible = [rule for rule in candidates if interaction in rule.trigger.interactions
                    and (rule.spec.end is None or rule.spec.end > seen_at)  # past Subscription.end
                    and rule.author.can_read(seen)]  # the subscriber may not read it: they are not told of it
        # Every criteria test the rules need, answered in one query (not one round trip per subscription).
        tests: dict[int, tuple[AnyCriterion, ...]] = {}
        for rule in eligible:
            trig = rule.trigger
            if rule.filters:
                tests[id(rule.filters)] = rule.filters
            if rule.current is not None and not (interaction == "delete" and trig.result_for_delete):
                tests[id(rule.current)] = rule.current
            if rule.previous is not None and interaction == "delete":
                tests[id(rule.previous)] = rule.previous
        passed = self._matches_all(repo, rtype, rid, tests)
        for rule in eligible:
            sid, trig = rule.spec.id, rule.trigger
            if sid in fired or (rule.filters and not passed[id(rule.filters)]):
                continue
            current: bool | None = None
            if rule.current is not None:
                current = trig.result_for_delete == "test-passes" if interaction == "delete" and \
                    trig.result_for_delete else passed[id(rule.current)]
            previous: bool | None = None
            if rule.previous is not None:
                previous = trig.result_for_create != "test-fails" if interaction == "create" else \
                    before.get(id(rule), False) if interaction == "update" else passed[id(rule.previous)]
            if not combine(previous, current, trig.require_both):
                continue
            fired[sid] = rule.spec
        if fired:
            assert event.version is not None
            self._record(repo, list(fired.values()), event, event.version, interaction)

    def _matches_all(self, repo: Repository, rtype: str, rid: str,
                     tests: dict[int, tuple[AnyCriterion, ...]]) -> dict[int, bool]:
        """Whether the resource matches each criteria: one query per MATCH_CHUNK distinct criteria, built
        once per set of rules (the resource's id is its parameter)."""
        keys = list(tests)
        passed: dict[int, bool] = {}
        for start in range(0, len(keys), MATCH_CHUNK):
            chunk = keys[start:start + MATCH_CHUNK]
            criteria = [tests[key] for key in chunk]
            cache_key = (rtype, tuple(chunk))
            cached = self._match_statements.get(cache_key)
            # (the criteria objects are compared too: an id may be reused once a rule set is dropped)
            if cached is None or any(a is not b for a, b in zip(cached[0], criteria, strict=True)):
                cached = self._match_statement(rtype, criteria)
                if len(self._match_statements) > 256:
                    self._match_statements.clear()
                self._match_statements[cache_key] = cached
            _criteria, stmt, columns = cached
            row = repo.execute(stmt, {"match_rid": rid}).one()
            passed.update((key, bool(row[column])) for key, column in zip(chunk, columns, strict=True))
        return passed

    def _match_statement(self, rtype: str, criteria: list[tuple[AnyCriterion, ...]]
                         ) -> _MatchStatement:
        """One EXISTS per distinct criteria (subscribers often ask the same); which column answers each."""
        r = RESOURCE  # not r.deleted: a deletion is matched against the version it removes (its index rows stay)
        distinct: list[tuple[AnyCriterion, ...]] = []
        columns: list[int] = []
        for c in criteria:
            found = next((i for i, d in enumerate(distinct) if d == c), None)
            if found is None:
                distinct.append(c)
                found = len(distinct) - 1
            columns.append(found)
        stmt = select(*(select(r.c.id).where(and_(r.c.resource_type == rtype, r.c.id == bindparam("match_rid"), *(
            predicate(self.ctx, r, rtype, one) for one in c))).exists().label(f"m{i}") for i, c in enumerate(distinct)))
        return criteria, stmt, columns

    def _record(self, repo: Repository, subs: list[SubscriptionSpec], event: WriteEvent, version: Version,
                interaction: str) -> None:
        """Number the event for every subscription it fired: one statement takes their counter rows (locked
        to commit, in subscription id order: concurrent writers queue instead of deadlocking), one inserts
        their notifications. Every query of the matching came before: the writers queue for the counters
        as briefly as the transaction allows."""
        # The counter row's lock (held to commit) orders this against a handshake's release_held: a
        # notification is held exactly when the channel is unverified as of the counter update.
        ids = sorted(sub.id for sub in subs)
        in_order = select(STATE.c.subscription_id).where(STATE.c.subscription_id.in_(ids)) \
            .order_by(STATE.c.subscription_id).with_for_update()
        counted = {r.subscription_id: (int(r.events), bool(r.verified)) for r in repo.execute(
            update(STATE).where(STATE.c.subscription_id.in_(in_order.scalar_subquery()))
            .values(events=STATE.c.events + 1).returning(STATE.c.subscription_id, STATE.c.events, STATE.c.verified))}
        focus = f"{event.resource_type}/{event.resource_id}/_history/{version.version_id}"
        now = datetime.now(UTC)
        notifications: list[dict[str, object]] = []
        for sub in subs:
            if sub.id not in counted:  # state row lost (e.g. the subscription predates its table): start counting
                # No author known: no access (auth/stored.py), so nothing reaches anyone until it is saved again.
                repo.execute(insert(STATE).values(subscription_id=sub.id, events=1, author=None, activated=True,
                                                  verified=True))
                counted[sub.id] = (1, True)
            number, verified = counted[sub.id]
            repo.defer_insert(EVENT, {"subscription_id": sub.id, "event_number": number,
                                      "timestamp": version.last_updated, "focus": focus, "interaction": interaction})
            if sub.channel_type == "rest-hook":
                notifications.append({
                    "topic": NOTIFY_TOPIC, "key": notification_key(sub.id, number),
                    "payload": {"subscription": sub.id, "event": number}, "status": "pending" if verified else HELD,
                    "attempts": 0, "max_attempts": 10, "next_attempt_at": now, "created_at": now,
                    "last_error": None if verified else "waiting for the subscription's handshake"})
        if notifications:  # executemany: compiled once (a multi-row VALUES is compiled afresh every time)
            repo.execute(insert(OUTBOX), notifications)
