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

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Repository
from fhir_server.subscriptions.bundles import Event


def readable_events(repo: Repository, events: list[Event], *,
                    full: bool) -> tuple[list[Event], dict[str, dict[str, Any] | None]]:
    """(the events ``repo.access`` may be told of, their focus contents when ``full``). A deletion is
    checked against the version it removed (the tombstone has no content)."""
    kept: list[Event] = []
    resources: dict[str, dict[str, Any] | None] = {}
    for event in events:
        rtype, rid, _h, vid = event.focus.split("/")
        deleted = event.interaction == "delete"
        try:
            if deleted:
                repo.visible(rtype, rid)  # 403 unless the caller may read it as it stands (or last stood)
                if int(vid) > 1:
                    repo.vread(rtype, rid, int(vid) - 1)
            else:
                current = repo.visible(rtype, rid)  # auth: as vread; the current version is the usual case
                if current is not None and current.version_id == int(vid) and not current.deleted:
                    version = repo.access.mask(current)  # one read, not a second of the same content
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
