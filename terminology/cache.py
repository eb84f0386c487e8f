"""The terminology fast path: ValueSets resolved by canonical URL, and the answer "is this code a member?",
kept in process per database, so a repeated $validate-code costs one primary-key read instead of three
queries (canonical lookup, CodeSystem, concept rows).

Invalidation, across processes (``--workers 2``): every write of a CodeSystem or ValueSet (importers and the
core preload included: they write the CodeSystem resource) replaces the terminology generation token in its
own transaction (``fhir_server/storage/generation.py``, the mechanism of the subscriptions cache). Each unit
of work that uses the cache reads the token once; a token other than the one the cache was built from empties
it. Entries computed while the token moved are not kept (``_store`` compares the token they were read under).

Access: the cache holds what the database holds; a caller's token is checked against the cached ValueSet
on every use (``AccessPolicy.can_read``), as a read of it would be.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from fhir_server.hooks import HookPoint, Hooks, WriteEvent
from fhir_server.storage.access import as_system
from fhir_server.storage.generation import TERMINOLOGY, Generation
from fhir_server.storage.repository import Version
from terminology import store
from terminology.valueset import Member

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

MAX_MEMBERS = 100_000  # membership answers kept (LRU); each is a few small tuples
MAX_EXPANDED = 200_000  # members of whole value sets kept (LRU by value set)
MAX_VALUE_SETS = 4096
TERMINOLOGY_TYPES = frozenset({"CodeSystem", "ValueSet"})
_FINISHER = "terminology-generation"
_UNLOADED = object()
_tokens = Generation(TERMINOLOGY)
# One cache per database: tests and tools run several servers, on different databases, in one process.
_caches: weakref.WeakKeyDictionary[Engine, TerminologyCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()

VsKey = tuple[str, str]  # (ValueSet id, versionId)
MemberKey = tuple[str, str, str | None, str]  # VsKey + (system or None, code)


def register(hooks: Hooks) -> None:
    hooks.register(HookPoint.BEFORE_COMMIT, on_write)


def on_write(event: WriteEvent, repo: Repository | None) -> None:
    """A CodeSystem or ValueSet changed: a new token once per unit of work (a 200-resource preload batch
    writes it once), just before the commit."""
    if event.resource_type in TERMINOLOGY_TYPES and repo is not None:
        repo.finishers.setdefault(_FINISHER, _tokens.bump)


def cache_of(repo: Repository) -> TerminologyCache:
    engine = repo.conn.engine
    cache = _caches.get(engine)
    if cache is None:
        with _caches_lock:
            cache = _caches.setdefault(engine, TerminologyCache())
    return cache


@dataclass(frozen=True)
class Whole:
    """A value set expanded whole: membership is a dictionary lookup."""

    size: int
    by_key: dict[tuple[str, str], Member]
    by_code: dict[str, tuple[Member, ...]]

    @staticmethod
    def of(found: list[Member]) -> Whole:
        by_code: dict[str, list[Member]] = {}
        for m in found:
            by_code.setdefault(m.code, []).append(m)
        return Whole(len(found), {m.key: m for m in found}, {c: tuple(ms) for c, ms in by_code.items()})

    def lookup(self, system: str | None, code: str) -> tuple[Member, ...]:
        """As ``members(repo, vs, only=(system, code))`` answers."""
        if system is None:
            return self.by_code.get(code, ())
        found = self.by_key.get((system, code))
        return () if found is None else (found,)


class TerminologyCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: object = _UNLOADED
        self._value_sets: dict[tuple[str, str | None], Version] = {}
        self._members: OrderedDict[MemberKey, tuple[Member, ...]] = OrderedDict()
        self._wholes: OrderedDict[VsKey, Whole | None] = OrderedDict()  # None: too big, ask code by code
        self._expanded = 0
        self.hits = 0  # tests, metrics
        self.misses = 0

    def _current(self, repo: Repository) -> object:
        """The token of this unit of work; the cache is emptied when it is not the one it was built from."""
        token = _tokens.token(repo)
        with self._lock:
            if token != self._token:
                self._token = token
                self._value_sets.clear()
                self._members.clear()
                self._wholes.clear()
                self._expanded = 0
        return token

    def value_set(self, repo: Repository, url: str, version: str | None,
                  resolve: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], VsKey]:
        """The stored ValueSet with this canonical URL (``resolve`` finds it, with full access, when not
        cached; it raises the 404); one the caller may not read is not found, as without the cache."""
        token = self._current(repo)
        found = self._value_sets.get((url, version))
        if found is None:
            # cached for everyone: the caller's rights apply below
            with repo.acting_as(as_system("ValueSet cache shared by every caller")):
                content = resolve()
            found = Version("ValueSet", str(content.get("id")), int((content.get("meta") or {}).get("versionId") or 0),
                            datetime.now(UTC), False, content)
            with self._lock:
                if self._token == token:
                    self._value_sets[(url, version)] = found
                    while len(self._value_sets) > MAX_VALUE_SETS:
                        self._value_sets.pop(next(iter(self._value_sets)))
        if not repo.access.can_read(found):
            raise store.unknown("ValueSet", url, version)  # as the lookup answers what the caller may not read
        assert found.content is not None
        return found.content, (found.id, str(found.version_id))

    def members(self, repo: Repository, vs_key: VsKey, system: str | None, code: str,
                compute: Callable[[], list[Member]]) -> tuple[Member, ...]:
        """Which members of the value set have this code (and system): computed once per generation."""
        token = self._current(repo)
        key: MemberKey = (*vs_key, system, code)
        with self._lock:
            found = self._members.get(key)
            if found is not None:
                self._members.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        result = tuple(compute())
        with self._lock:
            if self._token == token:
                self._members[key] = result
                while len(self._members) > MAX_MEMBERS:
                    self._members.popitem(last=False)
        return result

    def whole(self, repo: Repository, vs_key: VsKey,
              compute: Callable[[], list[Member] | None]) -> Whole | None:
        """The value set expanded whole (``compute`` returns None when it is too big to hold): once per
        generation, for a small value set's $validate-code to cost no query on a code never asked before."""
        token = self._current(repo)
        with self._lock:
            if vs_key in self._wholes:
                self._wholes.move_to_end(vs_key)
                found = self._wholes[vs_key]
                if found is not None:
                    self.hits += 1
                return found
            self.misses += 1
        computed = compute()
        result = None if computed is None else Whole.of(computed)
        with self._lock:
            if self._token == token:
                self._wholes[vs_key] = result
                self._expanded += result.size if result else 0
                while self._expanded > MAX_EXPANDED and len(self._wholes) > 1:
                    _key, dropped = self._wholes.popitem(last=False)
                    self._expanded -= dropped.size if dropped else 0
        return result

    def value_set_key(self, repo: Repository, version: Version) -> VsKey:
        """The key of a ValueSet read by id (instance-level operations), after the token check."""
        self._current(repo)
        return version.id, str(version.version_id)


def cache_for(engine: Engine) -> TerminologyCache | None:
    """The cache of one database, if any operation built it (tests, metrics)."""
    return _caches.get(engine)
