"""The current versions a unit of work already knows: written by it, or read by it (and whether locked).

42 of the seed's 148 statements per patient re-read a resource the same transaction had just written or read
(a rule reading the Slot the booking hook just updated, an invoice's ChargeItems created in its Bundle). Only
the repository writes the ``resource`` table, so what this transaction wrote is the current row as its own
later statements would see it, and holds the row's lock (an UPDATE's, or a new row nobody else can see yet).
A row read ``FOR UPDATE`` stays locked until the end; a row read plainly is served again to plain reads only
(a locking read still goes to the database). Content is kept as JSON bytes so a caller mutating what it was
given never changes what the next caller gets. The cache lives and dies with one transaction attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from fhir_server.storage.repository import Version


@dataclass
class KnownVersions:
    # (type, id) -> (version without content, its content as JSON bytes or None, whether this transaction holds
    # the row's lock)
    entries: dict[tuple[str, str], tuple[Version, bytes | None, bool]] = field(default_factory=dict)

    def remember(self, version: Version, *, locked: bool) -> None:
        blob = None if version.content is None else orjson.dumps(version.content)
        self.entries[(version.resource_type, version.id)] = (replace(version, content=None, method="PUT"), blob, locked)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.entries

    def get(self, resource_type: str, resource_id: str, *, for_update: bool) -> Version | None:
        """A fresh copy of the known current version; None when unknown (or known unlocked but a lock is asked)."""
        hit = self.entries.get((resource_type, resource_id))
        if hit is None or (for_update and not hit[2]):
            return None
        version, blob, _locked = hit
        return version if blob is None else replace(version, content=orjson.loads(blob))
