"""Clinical notes (Composition; DocumentReference for scanned documents), data/notes.json.

- Signed (Composition: status final/amended with an attester; DocumentReference: docStatus final/amended
  with an authenticator): immutable, update/patch/delete refused 409 ``clinic-note-signed``.
- Unsigned: editable for FHIR_CLINIC_NOTE_EDIT_HOURS after its ``date``, then only signed (the one change
  allowed late); other edits 409 ``clinic-note-edit-window``.
- Amendment: a new note whose ``relatesTo`` replaces/appends an earlier one. In the amendment's own transaction
  the replaced note gets its replaced status (Composition ``amended``, DocumentReference ``superseded``; or
  ``entered-in-error`` when the relatesTo carries the replaced-as extension), and a Provenance records the
  amendment. Those statuses are set only that way (422 ``clinic-note-status-by-amendment``); a note already
  replaced cannot be amended again (409 ``clinic-note-already-replaced``: the row lock of the update makes
  concurrent amendments of one note yield one winner).
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_server.hooks import HookPoint, Hooks
from fhir_server.workflows.rules import rule_violation

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.hooks import WriteEvent
    from fhir_server.storage.repository import Repository, Version

# The notes this call is marking replaced (call-scoped, not shared state): their update is the amendment's own.
_amending: ContextVar[frozenset[tuple[str, str]]] = ContextVar("clinic_amending", default=frozenset())
_IGNORED = ("meta", "text")  # what a late signature may change besides status and signers


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return dict(json.loads((Path(__file__).parent / "data" / "notes.json").read_text()))


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        when = datetime.fromisoformat(value if len(value) > 10 else value + "T00:00:00")
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def signed(spec: dict[str, Any], content: dict[str, Any] | None) -> bool:
    if not content:
        return False
    return content.get(spec["status"]) in spec["signedStatuses"] and bool(content.get(spec["signers"]))


def _only_signing(spec: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> bool:
    skip = {*_IGNORED, "id", spec["status"], spec["signers"]}
    same = {k: v for k, v in old.items() if k not in skip} == {k: v for k, v in new.items() if k not in skip}
    return same and signed(spec, new)


class NoteRules:
    def __init__(self, settings: Settings) -> None:
        self.window = timedelta(hours=settings.clinic_note_edit_hours)

    def register(self, hooks: Hooks) -> None:
        hooks.register(HookPoint.BEFORE_VALIDATE, self.before_validate)
        hooks.register(HookPoint.BEFORE_COMMIT, self.before_commit)

    # --- edits of an existing note -------------------------------------------------------------------
    def before_validate(self, event: WriteEvent, repo: Repository | None) -> None:
        spec = table()["resources"].get(event.resource_type)
        if spec is None or not isinstance(event.resource, dict):
            return
        if (event.resource_type, event.resource_id or "") in _amending.get():
            return
        if event.interaction != "create" and event.previous is not None and not event.previous.deleted:
            self._editable(spec, event.previous, event.resource)
        self._status_by_amendment(spec, event)

    def _status_by_amendment(self, spec: dict[str, Any], event: WriteEvent) -> None:
        new = event.resource or {}
        old = event.previous.content if event.previous is not None and not event.previous.deleted else {}
        if not old and any(isinstance(r, dict) and r.get("code") in ("replaces", "appends")
                           for r in new.get("relatesTo") or []):
            return  # an amendment may itself say amended
        for element, values in spec["onlyByAmendment"].items():
            if new.get(element) in values and (old or {}).get(element) != new.get(element):
                raise rule_violation(422, "clinic-note-status-by-amendment",
                                     f"{event.resource_type}.{element} '{new.get(element)}' is set by writing an "
                                     f"amendment (a new {event.resource_type} whose relatesTo replaces this one)",
                                     (f"{event.resource_type}.{element}",))

    def _editable(self, spec: dict[str, Any], previous: Version, new: dict[str, Any] | None) -> None:
        old = previous.content or {}
        rtype, rid = previous.resource_type, previous.id
        if signed(spec, old):
            raise rule_violation(409, "clinic-note-signed", f"{rtype}/{rid} is signed and cannot be changed: "
                                 f"write an amendment (a new {rtype} whose relatesTo replaces or appends it)",
                                 (f"{rtype}.{spec['status']}",))
        written = _parse(old.get(spec["date"]))
        if written is None or datetime.now(UTC) - written <= self.window:
            return
        if new is not None and _only_signing(spec, old, new):
            return  # a late signature: nothing else changes
        raise rule_violation(409, "clinic-note-edit-window",
                             f"{rtype}/{rid} is unsigned and older than {self.window.total_seconds() / 3600:g} h "
                             f"(its {spec['date']} {old.get(spec['date'])}): sign it, or write an amendment",
                             (f"{rtype}.{spec['date']}",))

    # --- deletes, and amendments once the new note is written ----------------------------------------
    def before_commit(self, event: WriteEvent, repo: Repository | None) -> None:
        spec = table()["resources"].get(event.resource_type)
        if spec is None or repo is None:
            return
        if (event.resource_type, event.resource_id or "") in _amending.get():
            return
        if event.interaction == "delete" and event.previous is not None:
            self._editable(spec, event.previous, None)
        elif event.interaction == "create" and isinstance(event.resource, dict):
            for i, relation in enumerate(event.resource.get("relatesTo") or []):
                if isinstance(relation, dict) and relation.get("code") in ("replaces", "appends"):
                    self._amend(spec, repo, event, relation, i)

    def _amend(self, spec: dict[str, Any], repo: Repository, event: WriteEvent, relation: dict[str, Any],
               index: int) -> None:
        rtype, note = event.resource_type, event.resource or {}
        where = f"{rtype}.relatesTo[{index}].{spec['relatesTo']}"
        ref = (relation.get(spec["relatesTo"]) or {}).get("reference")
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 2 or parts[0] != rtype:
            raise rule_violation(422, "clinic-amend-target", f"an amendment names the {rtype} it "
                                 f"{relation['code']} as {rtype}/[id]", (where,))
        target = repo.current(rtype, parts[1], for_update=True)  # amendments of one note queue here
        if target is None or target.deleted or not target.content:
            raise rule_violation(422, "clinic-amend-target", f"{ref} does not exist", (where,))
        old = target.content
        if (old.get(spec["subject"]) or {}).get("reference") != (note.get(spec["subject"]) or {}).get("reference"):
            raise rule_violation(422, "clinic-amend-subject", f"an amendment is about the same patient as {ref}",
                                 (f"{rtype}.{spec['subject']}",))
        done = {v for values in spec["onlyByAmendment"].values() for v in values}
        if any(old.get(e) in done for e in spec["onlyByAmendment"]):
            raise rule_violation(409, "clinic-note-already-replaced",
                                 f"{ref} has already been replaced or marked entered-in-error", (where,))
        outcome = relation["code"]
        if outcome == "replaces":
            as_error = any(isinstance(x, dict) and x.get("url") == table()["replacedAsExtension"]
                           and x.get("valueCode") == "entered-in-error" for x in relation.get("extension") or [])
            change = spec["enteredInError"] if as_error else spec["replaced"]
            outcome = "entered-in-error" if as_error else outcome
            token = _amending.set(_amending.get() | {(rtype, target.id)})
            try:
                updated, _ = repo.update(rtype, target.id, {**old, change["element"]: change["value"]})
            finally:
                _amending.reset(token)
            replaced_version = updated.version_id
        else:
            replaced_version = target.version_id
        repo.create("Provenance", self._provenance(repo, event, target, replaced_version, outcome))

    def _provenance(self, repo: Repository, event: WriteEvent, target: Version, replaced_version: int,
                    outcome: str) -> dict[str, Any]:
        note = event.resource or {}
        rtype = event.resource_type
        activity = table()["provenanceActivity"]
        who = getattr(repo.access, "fhir_user", None)
        agent = {"reference": who} if isinstance(who, str) and who else None
        if agent is None:
            authors = note.get("author") or note.get("authenticator") or []
            agent = authors[0] if isinstance(authors, list) and authors else authors or {"display": "unknown"}
        assert event.version is not None
        return {
            "resourceType": "Provenance",
            "target": [{"reference": f"{rtype}/{event.resource_id}/_history/{event.version.version_id}"},
                       {"reference": f"{rtype}/{target.id}/_history/{replaced_version}"}],
            "recorded": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "activity": {"coding": [{"system": activity["system"], **activity[outcome]}]},
            "agent": [{"who": agent}],
            "entity": [{"role": "revision",
                        "what": {"reference": f"{rtype}/{target.id}/_history/{target.version_id}"}}],
        }
