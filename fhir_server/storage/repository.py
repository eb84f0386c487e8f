"""The per-request repository: every read and write of resources goes through it.

One generic path serves every resource type (HAPI's generic DAO, Medplum's Repository). It runs inside a
unit of work's transaction (see ``uow.py``) and never commits itself. Writes keep ``meta.versionId`` and
``meta.lastUpdated``, append a history row, and run the BEFORE_VALIDATE / BEFORE_COMMIT hooks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, CursorResult, Executable, Table, bindparam, func, insert, select, true, update

from fhir_server.errors import CONFLICT, DELETED, NOT_FOUND, FhirError, not_found
from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.storage.bulk import BulkRows
from fhir_server.storage.database import lock_key
from fhir_server.storage.known import KnownVersions
from fhir_server.storage.models import OUTBOX, RESOURCE, RESOURCE_HISTORY
from fhir_server.validation import ResourceValidator

RES = RESOURCE
HIST = RESOURCE_HISTORY
_VERSION_COLUMNS: dict[str, Any] = {c: bindparam(c) for c in ("version_id", "last_updated", "deleted", "content")}
_UPDATE_CURRENT = update(RES).where(RES.c.resource_type == bindparam("rt"), RES.c.id == bindparam("rid")) \
    .values(**_VERSION_COLUMNS)
# The hottest read, built once (SQLAlchemy then only looks its compiled form up in its cache).
_CURRENT = select(RES.c.version_id, RES.c.last_updated, RES.c.deleted, RES.c.content).where(
    RES.c.resource_type == bindparam("rt"), RES.c.id == bindparam("rid"))
_CURRENT_FOR_UPDATE = _CURRENT.with_for_update()
_CURRENT_MANY = select(RES.c.id, RES.c.version_id, RES.c.last_updated, RES.c.deleted, RES.c.content).where(
    RES.c.resource_type == bindparam("rt"), RES.c.id.in_(bindparam("ids", expanding=True)))
_LIVE_MANY = _CURRENT_MANY.where(RES.c.deleted.is_(False))


@dataclass(frozen=True)
class Version:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    content: dict[str, Any] | None
    method: str = "PUT"

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


class AccessPolicy(Protocol):
    """What the caller may do: a token's ``fhir_server.auth.access.AccessContext``, or the server acting for
    itself (``fhir_server.storage.access.as_system``). Always given; there is no "no policy"."""

    def can_read(self, version: Version) -> bool:
        """SMART ``r``: read, vread, instance history."""
        ...

    def can_search(self, version: Version) -> bool:
        """SMART ``s``: what a search returns (matches, includes), type and system history."""
        ...

    def check_read(self, version: Version) -> None: ...

    def check_write(self, resource_type: str, content: dict[str, Any] | None, previous: Version | None) -> None: ...

    def search_compartment(self, resource_type: str) -> tuple[str, tuple[str, ...]] | None:
        """(patient id, compartment parameters) that search must filter on in SQL; None: no restriction."""
        ...

    def search_constraints(self, resource_type: str) -> tuple[tuple[tuple[str, str], ...], ...] | None:
        """SMART v2 granular constraints (``?category=laboratory``) search must filter on in SQL: any one of
        the constraint sets (each a list of search parameters, all of which must match); None: none apply."""
        ...

    def masks(self, resource_type: str) -> tuple[str, ...]:
        """The elements of ``resource_type`` masked for the caller (fhir_server/auth/masks.py); () for none."""
        ...

    def mask(self, version: Version) -> Version:
        """The version as the caller may see it (role-level element masks, fhir_server/auth/masks.py)."""
        ...

    def restore_masked(self, resource_type: str, content: dict[str, Any], previous: Version | None) -> dict[str, Any]:
        """The content to store for the caller's write: masked elements refused, their stored values kept."""
        ...

    def may(self, resource_type: str, letter: str) -> bool:
        """Whether some grant could permit ``letter`` (c r u d s) on some resource of this type."""
        ...

    def administers(self) -> bool:
        """Whether the caller may run administrative operations ($reindex, $import)."""
        ...


class Finder(Protocol):
    """Finds resources matching search criteria (conditional interactions; the search module provides it)."""

    def find_ids(self, repo: Repository, resource_type: str, params: list[tuple[str, str]], *,
                 limit: int = 50, after: str | None = None) -> list[str]: ...


def require_access(access: object, what: str) -> None:
    """auth: refuse, loudly, what would otherwise run with nobody's access (a forgotten argument)."""
    if access is None or not callable(getattr(access, "check_read", None)):
        raise TypeError(f"{what} needs an access policy: the caller's, or as_system(\"why\")")


def instant(value: datetime) -> str:
    """FHIR instant text for a UTC datetime, millisecond precision as most servers emit."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Repository:
    conn: Connection
    hooks: Hooks
    validator: ResourceValidator
    finder: Finder
    # auth: the caller's access policy, enforced below; required (full access is ``as_system("why")``).
    access: AccessPolicy
    events: list[WriteEvent] = field(default_factory=list)

    # Inserts deferred until the next statement or the commit, then written in bulk (COPY on PostgreSQL):
    # a whole transaction Bundle, with its search index rows, costs a few statements instead of thousands.
    pending: BulkRows = field(default_factory=BulkRows)
    # Current rows read (and locked) ahead by ``prefetch_current``; each is used by one update/delete.
    prefetched: dict[tuple[str, str], Version | None] = field(default_factory=dict)
    # Current versions this transaction wrote or read (known.py): not read from the database again.
    known: KnownVersions = field(default_factory=KnownVersions)
    # Advisory lock keys this transaction holds (until it ends): taking one again is a round trip for nothing.
    locked: set[str] = field(default_factory=set)
    # Work run once per unit of work, just before it commits, keyed by purpose: e.g. one AuditEvent for
    # all of a transaction's writes instead of one per resource.
    finishers: dict[str, Callable[[Repository], None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_access(self.access, "Repository")

    @contextmanager
    def acting_as(self, access: AccessPolicy) -> Iterator[Repository]:
        """Run a step of this unit of work under another policy, visibly at the call site (the server's own
        record: ``with repo.acting_as(as_system("audit trail")):``), and return to the caller's after it."""
        saved, self.access = self.access, access
        try:
            yield self
        finally:
            self.access = saved

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name

    def defer_insert(self, table: Table, row: dict[str, Any]) -> None:
        """Queue a row whose insert nobody reads back; it is written before anything else touches the
        database in this transaction (any ``execute`` flushes first), at the latest before the commit."""
        self.pending.add(table, row)

    def defer_delete(self, table: Table, resource_type: str, resource_id: str) -> None:
        """Queue the deletion of a resource's rows in ``table`` (its old search index rows): run at the next
        flush, before the deferred inserts, and dropping those of the resource still queued."""
        self.pending.delete_rows(table, resource_type, resource_id)

    def flush(self) -> None:
        if self.pending:
            self.pending.flush(self.conn)

    def finish(self) -> None:
        """Run the finishers (a finisher may write, and so register more), then send deferred inserts."""
        while self.finishers:
            _key, finisher = self.finishers.popitem()
            finisher(self)
        self.flush()

    def execute(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        """Run a statement in this transaction, after the deferred inserts (so it sees them)."""
        self.flush()
        return self.conn.execute(statement, params)

    # --- reads -------------------------------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> Version:
        version = self.visible(resource_type, resource_id)  # auth: 403 before 404 or 410
        if version is None:
            raise not_found(resource_type, resource_id)
        if version.deleted:
            raise FhirError(410, DELETED, f"Resource {resource_type}/{resource_id} has been deleted "
                                          f"(version {version.version_id})")
        return self.access.mask(version)  # auth: the role's masked elements taken out

    def prefetch_current(self, references: list[tuple[str, str]]) -> None:
        """Read and lock the current rows of resources about to be updated or deleted, (type, id) pairs, in
        one SELECT ... FOR UPDATE per 500 instead of one per resource (a transaction of PUTs by id)."""
        wanted = sorted(set(references))  # one lock order for every transaction: fewer deadlocks
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            # Type IN and id IN: the primary key index serves it; a stray (other type, same id) row is only
            # locked, never used.
            rows = self.execute(
                select(RES.c.resource_type, RES.c.id, RES.c.version_id, RES.c.last_updated, RES.c.deleted,
                       RES.c.content)
                .where(RES.c.resource_type.in_(sorted({t for t, _ in chunk})), RES.c.id.in_([i for _, i in chunk]))
                .order_by(RES.c.resource_type, RES.c.id).with_for_update())
            found = {(r.resource_type, r.id): Version(r.resource_type, r.id, r.version_id, r.last_updated, r.deleted,
                                                      r.content) for r in rows}
            for key in chunk:
                self.prefetched[key] = found.get(key)

    def preload(self, references: list[tuple[str, str]]) -> None:
        """Read the current versions of resources about to be read one by one, (type, id) pairs, in one SELECT
        per type and 500 ids (a rule reading the whole price list); unlocked. Every later ``read`` still checks
        the caller's access: this only saves the round trips."""
        by_type: dict[str, list[str]] = {}
        for rtype, rid in references:
            if (rtype, rid) not in self.known:
                by_type.setdefault(rtype, []).append(rid)
        for rtype, ids in by_type.items():
            for start in range(0, len(ids), 500):
                for r in self.execute(_CURRENT_MANY, {"rt": rtype, "ids": ids[start:start + 500]}):
                    self.known.remember(Version(rtype, r.id, r.version_id, r.last_updated, r.deleted, r.content),
                                        locked=False)

    def current(self, resource_type: str, resource_id: str, *, for_update: bool = False) -> Version | None:
        key = (resource_type, resource_id)
        if for_update and key in self.prefetched:  # locked by prefetch_current; good for one write
            version = self.prefetched.pop(key)
            if version is not None:
                self.known.remember(version, locked=True)
            return version
        known = self.known.get(resource_type, resource_id, for_update=for_update)
        if known is not None:
            return known
        row = self.execute(_CURRENT_FOR_UPDATE if for_update else _CURRENT,
                           {"rt": resource_type, "rid": resource_id}).first()
        if row is None:
            return None
        version = Version(resource_type, resource_id, row.version_id, row.last_updated, row.deleted, row.content)
        self.known.remember(version, locked=for_update)
        return version

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> Version:
        self.visible(resource_type, resource_id)  # auth: 403 before "no such version" or "a deletion"
        row = self.execute(
            select(HIST.c.last_updated, HIST.c.deleted, HIST.c.content, HIST.c.method).where(
                HIST.c.resource_type == resource_type, HIST.c.id == resource_id,
                HIST.c.version_id == version_id)).first()
        if row is None:
            raise FhirError(404, NOT_FOUND, f"Version {version_id} of {resource_type}/{resource_id} is not known")
        if row.deleted:
            raise FhirError(410, DELETED, f"Version {version_id} of {resource_type}/{resource_id} is a deletion")
        version = Version(resource_type, resource_id, version_id, row.last_updated, row.deleted, row.content,
                          row.method)
        self.access.check_read(version)  # auth
        return self.access.mask(version)

    def visible(self, resource_type: str, resource_id: str, *, for_update: bool = False) -> Version | None:
        """The current version (None: it never existed), once the caller is known to be allowed to read the
        resource as it stands: its content, its last content when deleted, nothing when it never existed.
        auth: so a caller who may not read it gets 403 before any 404, 410 or 412, and learns nothing of
        whether it exists, which version it is at, or that it was deleted."""
        current = self.current(resource_type, resource_id, for_update=for_update)
        if current is not None and not current.deleted:
            self.access.check_read(current)
        else:
            self._check_read_deleted(resource_type, resource_id)
        return current

    def _check_read_deleted(self, resource_type: str, resource_id: str) -> None:
        """auth: 410 only for a caller who could read what was deleted (its last content), so a forbidden
        caller gets the same 403 as for a live resource and learns nothing of the deletion. A resource that
        never existed is checked with no content: what only a compartment or a constraint permits is 403."""
        row = self.execute(select(HIST.c.version_id, HIST.c.last_updated, HIST.c.content).where(
            HIST.c.resource_type == resource_type, HIST.c.id == resource_id, HIST.c.deleted.is_(False))
            .order_by(HIST.c.version_id.desc()).limit(1)).first()
        content = row.content if row is not None else None
        self.access.check_read(Version(resource_type, resource_id, row.version_id if row else 0,
                                       row.last_updated if row else datetime.now(UTC), False, content))

    def read_many(self, references: list[tuple[str, str]]) -> list[Version]:
        """Current, non-deleted versions of the given (type, id) pairs, in no particular order: what a search
        returns, so the access filter is ``can_search`` (SMART ``s``)."""
        out: list[Version] = []
        by_type: dict[str, list[str]] = {}
        for rtype, rid in references:
            by_type.setdefault(rtype, []).append(rid)
        for rtype, ids in by_type.items():
            for start in range(0, len(ids), 500):
                rows = self.execute(_LIVE_MANY, {"rt": rtype, "ids": ids[start:start + 500]})
                out.extend(Version(rtype, r.id, r.version_id, r.last_updated, False, r.content) for r in rows)
        # auth: what the token may not search is left out (a search's loader), masked elements taken out
        return [self.access.mask(v) for v in out if self.access.can_search(v)]

    def history(self, resource_type: str | None = None, resource_id: str | None = None, *,
                since: datetime | None = None, at: datetime | None = None, before_pk: int | None = None,
                count: int = 20) -> tuple[list[tuple[int, Version]], bool]:
        """Versions newest first; returns (rows with their cursor pk, whether more follow)."""
        conds = []
        if resource_type is not None:
            conds.append(HIST.c.resource_type == resource_type)
        if resource_id is not None:
            conds.append(HIST.c.id == resource_id)
        if since is not None:
            conds.append(HIST.c.last_updated >= since)
        if at is not None:
            conds.append(HIST.c.last_updated <= at)
        if before_pk is not None:
            conds.append(HIST.c.pk < before_pk)
        stmt = select(HIST).where(true(), *conds).order_by(HIST.c.pk.desc()).limit(count + 1)
        rows = self.execute(stmt).all()
        out = [(r.pk, Version(r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.content, r.method))
               for r in rows[:count]]
        # auth: after paging (a page may be shorter); SMART v2: instance history is ``r``, type and system ``s``
        allowed = self.access.can_read if resource_id is not None else self.access.can_search
        out = [(pk, self.access.mask(v)) for pk, v in out if allowed(v)]
        return out, len(rows) > count

    def history_total(self, resource_type: str, resource_id: str) -> int:
        return int(self.execute(select(func.count()).select_from(HIST).where(
            HIST.c.resource_type == resource_type, HIST.c.id == resource_id)).scalar_one())

    def find_ids(self, resource_type: str, params: list[tuple[str, str]], *, limit: int = 50,
                 after: str | None = None) -> list[str]:
        self.flush()
        return self.finder.find_ids(self, resource_type, params, limit=limit, after=after)

    # --- writes ------------------------------------------------------------------------------------------

    def lock(self, key: str) -> None:
        """Serialise writers that share ``key`` until this transaction ends (conditional interactions).

        SQLite writers already hold the database lock from BEGIN IMMEDIATE; PostgreSQL takes an advisory
        transaction lock, so 50 concurrent conditional creates with the same criteria make one resource.
        """
        if self.dialect == "postgresql" and key not in self.locked:
            self.conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (lock_key(key),))
            self.locked.add(key)

    def create(self, resource_type: str, resource: dict[str, Any], *, resource_id: str | None = None,
               method: str = "POST", trusted: bool = False) -> Version:
        """``trusted``: content the server built itself (its AuditEvents), whose shape a test checks against
        the base StructureDefinition once, instead of every write paying for it; hooks still run."""
        self.access.check_write(resource_type, resource, None)  # auth
        resource = self.access.restore_masked(resource_type, resource, None)
        event = WriteEvent("create", resource_type, resource_id, resource)
        content = self._prepare(event, validate=not trusted)
        rid = resource_id or str(uuid.uuid4())
        version = self._write(event, content, rid, 1, method, insert_current=True)
        return self.access.mask(version)

    def update(self, resource_type: str, resource_id: str, resource: dict[str, Any], *,
               if_match: int | None = None, method: str = "PUT",
               interaction: str = "update") -> tuple[Version, bool]:
        """Write a new version; returns (version, created) where created means no live resource existed."""
        current = self.current(resource_type, resource_id, for_update=True)
        # auth before the precondition: a caller who may not change (or, deleted, read) it never hears a 412
        if current is not None and current.deleted:
            self._check_read_deleted(resource_type, resource_id)
        self.access.check_write(resource_type, resource, current)
        _check_if_match(current, if_match, resource_type, resource_id)
        resource = self.access.restore_masked(resource_type, resource, current)  # masked elements kept
        # A PUT that brings a resource into being is a create for hooks (subscriptions, audit).
        event = WriteEvent(interaction if current is not None else "create", resource_type, resource_id, resource,
                           previous=current)
        content = self._prepare(event)
        if current is None:
            version, created = self._write(event, content, resource_id, 1, method, insert_current=True), True
        else:
            version = self._write(event, content, resource_id, current.version_id + 1, method, insert_current=False)
            created = current.deleted
        return self.access.mask(version), created

    def delete(self, resource_type: str, resource_id: str, *, if_match: int | None = None) -> Version | None:
        """Write a tombstone version; None when the resource was already deleted.

        auth first (docs/auth.md): a caller who may not read the resource gets 403 whether it is live,
        deleted or was never there; then the delete permission; only then 404 and If-Match."""
        current = self.visible(resource_type, resource_id, for_update=True)
        if current is not None and not current.deleted:
            self.access.check_write(resource_type, None, current)
        if current is None:
            raise not_found(resource_type, resource_id)
        _check_if_match(current, if_match, resource_type, resource_id)
        if current.deleted:
            return None
        event = WriteEvent("delete", resource_type, resource_id, None, previous=current)
        return self._write(event, None, resource_id, current.version_id + 1, "DELETE", insert_current=False)

    def enqueue(self, topic: str, key: str, payload: dict[str, Any], *, max_attempts: int = 10,
                not_before: datetime | None = None) -> None:
        """Add work to the outbox in this transaction: it exists if and only if the change commits.
        ``not_before``: not delivered before then (scheduled work, e.g. erasing data at a consent's end)."""
        now = datetime.now(UTC)
        self.execute(insert(OUTBOX).values(topic=topic, key=key, payload=payload, status="pending",
                                                attempts=0, max_attempts=max_attempts,
                                                next_attempt_at=max(now, not_before or now), created_at=now))

    # --- internals ---------------------------------------------------------------------------------------

    def _prepare(self, event: WriteEvent, *, validate: bool = True) -> dict[str, Any]:
        self.hooks.run(HookPoint.BEFORE_VALIDATE, event, self)
        assert event.resource is not None
        issues = self.validator.validate(event.resource, event.resource_type) if validate else []
        if issues:
            raise FhirError(400, issues)
        return event.resource

    def _write(self, event: WriteEvent, content: dict[str, Any] | None, resource_id: str, version_id: int,
               method: str, *, insert_current: bool) -> Version:
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as precise as meta.lastUpdated
        if content is not None:
            content = _stamp(content, resource_id, version_id, now)
        deleted = content is None
        row = {"resource_type": event.resource_type, "id": resource_id, "version_id": version_id,
               "last_updated": now, "deleted": deleted, "content": content}
        if insert_current:
            self.defer_insert(RES, row)
        elif self.dialect == "postgresql":  # the row is locked (current(for_update=True)): sent with the next flush
            self.pending.update(RES, row)
        else:
            self.execute(_UPDATE_CURRENT, {**row, "rt": event.resource_type, "rid": resource_id})
        self.defer_insert(HIST, {**row, "method": method})
        version = Version(event.resource_type, resource_id, version_id, now, deleted, content, method)
        self.known.remember(version, locked=True)  # ours: a new row nobody else sees, or an updated one we lock
        event.resource_id = resource_id
        event.resource = content
        event.version = version
        self.hooks.run(HookPoint.BEFORE_COMMIT, event, self)
        self.events.append(event)
        return version


def _check_if_match(current: Version | None, if_match: int | None, rtype: str, rid: str) -> None:
    if if_match is None:
        return
    if current is None:
        raise FhirError(412, CONFLICT, f"If-Match W/\"{if_match}\" given but {rtype}/{rid} does not exist")
    if current.version_id != if_match:
        raise FhirError(412, CONFLICT, f"Version conflict on {rtype}/{rid}: If-Match W/\"{if_match}\" but the "
                                       f"current version is {current.version_id}")


def _stamp(resource: dict[str, Any], resource_id: str, version_id: int, now: datetime) -> dict[str, Any]:
    """A copy with id and meta set; resourceType, id and meta first, as FHIR JSON is usually written."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant(now)
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": resource_id, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out
