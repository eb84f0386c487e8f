"""Group commit: mapped messages that arrive together on different connections are applied as ONE FHIR
transaction (one commit, one audit unit of work, one COPY per table for all of them).

Why: a message's own work (mapping, validation, index rows) is per message anyway, but each transaction
also pays fixed costs -- BEGIN/COMMIT, the transaction's AuditEvents, one COPY round trip per table, the
hooks' per-unit-of-work work -- which a group shares.

How: the listener hands each mapped message to a ``GroupCommitter``. While fewer than ``slots``
groups are being applied, a message goes at once (alone, when nothing else waits: no latency added at low
load); messages arriving meanwhile queue and go together as the next group. A group is the messages'
transaction Bundles concatenated, with each message's outcome row updated inside the same transaction.
Messages that touch the same resource (same entry fullUrl, same request URL or conditional criteria) never
share a group: one transaction may change a resource only once, and two conditional creates of one
patient in one transaction would both create it. Reference data many messages name (the attending doctor,
the ward: a found-or-created Practitioner or Location) does not split groups: the group keeps the first
message's lookup entry and the others refer to it; only a message that writes one by its criteria (an A20's
bed, a master file) waits for the group that looks it up. If the group's transaction fails for any reason (a bad
message, another copy of a message processed first), nothing of it is committed and each message is applied
again on its own, exactly as without grouping: it gets its own outcome, error and ACK.
ACKs leave only after the group's commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from fhir_server.errors import CONFLICT, FhirError
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import Repository
from interfaces.mllp.pipeline import Accepted, Finished, Hl7Pipeline, Prepared, inbound_access, record_outcome

log = logging.getLogger(__name__)

MAX_GROUP = 16  # messages per transaction: bounds the work lost (redone one by one) when a group fails
SLOTS = 1  # groups applied at the same time by one listener process (more: smaller groups, more CPU)


# Found-or-created reference data (interfaces: references.py in mappings): looked up, shared in a group.
SHARED_LOOKUPS = frozenset({"Practitioner", "Location"})


def _lookup(entry: dict[str, Any]) -> str | None:
    request = entry.get("request", {})
    if request.get("method") == "POST" and "ifNoneExist" in request and request.get("url") in SHARED_LOOKUPS:
        return f"{request['url']}?{request['ifNoneExist']}"
    return None


def identities(p: Prepared) -> set[str]:
    """What a message's transaction touches: entry fullUrls, request URLs and conditional criteria (but not
    its shared lookups, see ``lookups``)."""
    keys: set[str] = set()
    for entry in p.bundle.get("entry", []):
        if _lookup(entry) is not None:
            continue
        request = entry.get("request", {})
        if entry.get("fullUrl"):
            keys.add(entry["fullUrl"])
        url = str(request.get("url", ""))
        keys.add(url if "ifNoneExist" not in request else f"{url}?{request['ifNoneExist']}")
    return keys


def lookups(p: Prepared) -> set[str]:
    """The Practitioners and Locations a message finds or creates (criteria): several messages of one group
    may look up the same one, but not one another message writes by those criteria."""
    return {key for entry in p.bundle.get("entry", []) if (key := _lookup(entry)) is not None}


def _combine(group: list[Prepared]) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The group's entries, a lookup made by an earlier message of the group kept once (later messages refer
    to its entry), and for each message the positions of its own entries' responses."""
    entries: list[dict[str, Any]] = []
    positions: list[list[int]] = []
    first: dict[str, tuple[int, str]] = {}  # lookup criteria -> (position, fullUrl) of the kept entry
    for p in group:
        mine = p.bundle.get("entry", [])
        renamed = {e["fullUrl"]: first[key][1] for e in mine if (key := _lookup(e)) in first and key is not None}
        own: list[int] = []
        for entry in mine:
            key = _lookup(entry)
            if key is not None and key in first and entry["fullUrl"] in renamed:
                own.append(first[key][0])
                continue
            if key is not None:
                first[key] = (len(entries), entry["fullUrl"])
            if renamed:
                text = orjson.dumps(entry).decode()
                for old, new in renamed.items():
                    text = text.replace(f'"{old}"', f'"{new}"')
                entry = orjson.loads(text)
            own.append(len(entries))
            entries.append(entry)
        positions.append(own)
    return entries, positions


def apply_group(pipeline: Hl7Pipeline, group: list[Prepared]) -> list[str | None]:
    """Apply mapped messages in one transaction; the ACK of each (blocking: runs in the executor)."""
    if len(group) == 1:
        return [pipeline.apply(group[0])]
    entries, positions = _combine(group)

    def record(repo: Repository, responses: list[FhirResponse | None]) -> None:
        for p, own in zip(group, positions, strict=True):
            mine = [responses[i] for i in own]
            if p.after is not None:  # a front-desk merge (merges.py), after what the messages wrote
                p.after(repo, mine)
            if not record_outcome(repo, p, mine):
                raise FhirError(409, CONFLICT, "Another copy of an HL7 message of the group was processed first")

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    try:
        response = pipeline.server.handle(FhirRequest("POST", "", headers={"content-type": "application/fhir+json"},
                                                      resource=bundle, in_transaction=record,
                                                      access=inbound_access(*(p.acc.header for p in group))))
        ok = response.status < 400
    except Exception:
        log.exception("hl7: a group of %d messages failed; applying each alone", len(group))
        ok = False
    if ok:
        return [p.ack for p in group]
    # Nothing of the group committed. Each message again, alone and freshly mapped (the group's run may have
    # rewritten its Bundle): its own outcome, and its own error if it is the bad one.
    acks: list[str | None] = []
    for p in group:
        again = pipeline.prepare(p.acc)
        acks.append(again.ack if isinstance(again, Finished) else pipeline.apply(again))
    return acks


Runner = Callable[..., Awaitable[Any]]


class GroupCommitter:
    """The asyncio side: queues mapped messages and applies them in groups on the executor (``run``)."""

    def __init__(self, pipeline: Hl7Pipeline, run: Runner, *, max_group: int = MAX_GROUP, slots: int = SLOTS) -> None:
        self.pipeline = pipeline
        self.run = run
        self.max_group = max(1, max_group)
        self.slots = max(1, slots)
        # (message, what it touches, what it looks up, its ACK to come)
        self.pending: list[tuple[Prepared, set[str], set[str], asyncio.Future[str | None]]] = []
        self.active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.groups = 0  # groups applied, and the messages in them (tests, logs)
        self.messages = 0

    async def process(self, acc: Accepted) -> str | None:
        """Map, then apply with whatever else is waiting; the application ACK once it is committed."""
        prepared = await self.run(self.pipeline.prepare, acc)
        if isinstance(prepared, Finished):
            return prepared.ack
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.pending.append((prepared, identities(prepared), lookups(prepared), done))
        self._start()
        return await done

    def _start(self) -> None:
        while self.pending and self.active < self.slots:
            group: list[tuple[Prepared, asyncio.Future[str | None]]] = []
            taken: set[int] = set()
            keys: set[str] = set()
            looked: set[str] = set()
            for n, (p, ids, shared, done) in enumerate(self.pending):
                if len(group) == self.max_group:
                    break
                # a message touching what this group does (or writing what it looks up) waits for the next
                if done.cancelled() or ids & keys or ids & looked or shared & keys:
                    continue
                group.append((p, done))
                taken.add(n)
                keys |= ids
                looked |= shared
            self.pending = [item for n, item in enumerate(self.pending)
                            if n not in taken and not item[3].cancelled()]
            if not group:
                return
            self.active += 1
            task = asyncio.create_task(self._apply(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _apply(self, group: list[tuple[Prepared, asyncio.Future[str | None]]]) -> None:
        try:
            acks = await self.run(apply_group, self.pipeline, [p for p, _ in group])
        except BaseException as exc:  # e.g. the database is down: nothing committed, no ACK for any of them
            for _, done in group:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception) else ConnectionError("stopped"))
            if not isinstance(exc, Exception):
                raise
        else:
            self.groups += 1
            self.messages += len(group)
            for (_, done), ack in zip(group, acks, strict=True):
                if not done.done():
                    done.set_result(ack)
        finally:
            self.active -= 1
            self._start()
