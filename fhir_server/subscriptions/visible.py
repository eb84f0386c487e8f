"""What a notification may carry: only the events whose focus the receiver may read, decided when it is sent.

The websocket channel filters by the access of whoever bound (the bearer of ``bind <id>``, or whoever asked
for the binding token), rest-hook by the Subscription author's (recorded with each client write), ``$events``
by the caller's: each runs this in a unit of work under that access. A receiver who may not read a resource
is told neither that it changed nor its id; matching (engine.py) already skips what the author may not read,
this is the check at the other end, so that a token which may read a Subscription but not what it reports on
learns nothing through it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from fhir_server.errors import FhirError
from fhir_server.storage.models import RESOURCE as RES
from fhir_server.storage.repository import Repository, Version
from fhir_server.subscriptions.bundles import Event


def readable_events(repo: Repository, events: list[Event], *,
                    full: bool) -> tuple[list[Event], dict[str, dict[str, Any] | None]]:
    """(the events ``repo.access`` may be told of, their focus contents when ``full``). A deletion is
    checked against the version it removed (the tombstone has no content)."""
    kept: list[Event] = []
    resources: dict[str, dict[str, Any] | None] = {}
    currents = _currents(repo, [e for e in events if e.interaction != "delete"])
    for event in events:
        rtype, rid, _h, vid = event.focus.split("/")
        deleted = event.interaction == "delete"
        try:
            if deleted:
                repo.visible(rtype, rid)  # 403 unless the caller may read it as it stands (or last stood)
                if int(vid) > 1:
                    repo.vread(rtype, rid, int(vid) - 1)
            else:
                current = currents.get((rtype, rid))
                if current is not None and current.version_id == int(vid) and not current.deleted:
                    repo.access.check_read(current)  # auth: as vread of that version (it is the current one)
                    version = repo.access.mask(current)
                else:
                    version = repo.vread(rtype, rid, int(vid))
        except FhirError as exc:
            if exc.status in (403, 404, 410):
                continue  # not theirs to know of (or gone from the history): left out
            raise
        kept.append(event)
        if full and not deleted:
            resources[event.focus] = version.content
    return kept, resources


def _currents(repo: Repository, events: list[Event]) -> dict[tuple[str, str], Version]:
    """The current versions of the events' foci, one read per type (the usual case: the event's version is
    still the current one, so a batch of notifications needs no read per event). Not yet checked for access."""
    by_type: dict[str, set[str]] = {}
    for event in events:
        rtype, rid = event.focus.split("/")[:2]
        by_type.setdefault(rtype, set()).add(rid)
    found: dict[tuple[str, str], Version] = {}
    for rtype, ids in by_type.items():
        rows = repo.execute(select(RES.c.id, RES.c.version_id, RES.c.last_updated, RES.c.deleted, RES.c.content)
                            .where(RES.c.resource_type == rtype, RES.c.id.in_(sorted(ids))))
        found.update({(rtype, r.id): Version(rtype, r.id, r.version_id, r.last_updated, r.deleted, r.content)
                      for r in rows})
    return found
