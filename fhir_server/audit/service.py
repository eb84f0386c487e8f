"""The audit trail of the FHIR core: an AuditEvent for every read, vread, search, history, write,
operation, batch/transaction (and each entry), and every refused request.

Where each is written:
- a successful write: a BEFORE_COMMIT hook adds the AuditEvent to the change's own transaction, so it
  exists if and only if the change commits (a rolled-back transaction leaves only its failure events);
- everything else (reads, searches, failures, denials, the Bundle itself): queued to the recorder's
  background thread, so reads stay fast.
AuditEvents are append-only (``guard``), and the recorder's own writes are never audited again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir_server.audit.classify import Interaction, classify, query_text
from fhir_server.audit.events import SERVER, Actor, Record, interaction
from fhir_server.audit.recorder import RECORDING, AuditRecorder
from fhir_server.auth.access import AccessContext
from fhir_server.errors import FORBIDDEN, NOT_SUPPORTED, FhirError
from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.repository import AccessPolicy, Repository

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer

AUDIT_EVENT = "AuditEvent"
_ACTIONS = {"create": "C", "update": "U", "patch": "U", "delete": "D"}


@dataclass
class _RequestState:
    actor: Actor
    failure_recorded: bool = False


_STATE: ContextVar[_RequestState | None] = ContextVar("fhir_audit_request", default=None)


def actor_of(access: AccessPolicy | None, address: str | None) -> Actor:
    if not isinstance(access, AccessContext):
        return Actor(address=address)
    client_id, _, sub = (access.subject or "").partition(" ")  # "<client_id> <sub>"
    user = sub if access.role is not None else None  # a backend token's sub is the client itself
    return Actor(address=address, client_id=client_id or None, user_id=user or None, fhir_user=access.fhir_user,
                 role=access.role)


def may_record(access: AccessPolicy | None) -> bool:
    """Only a backend service granted ``system/AuditEvent.c`` by name (not ``system/*``) may POST its own
    AuditEvents (an IHE ATNA/BALP audit source, e.g. an EHR); users, admins included, never."""
    return isinstance(access, AccessContext) and access.role is None and any(
        s.context == "system" and s.resource_type == AUDIT_EVENT and "c" in s.permissions for s in access.scopes)


def returned(resp: FhirResponse) -> list[dict[str, Any]]:
    """The resources a response hands out (a read's resource, a search or history Bundle's entries)."""
    res = resp.resource
    if res is None or res.get("resourceType") == "OperationOutcome":
        return []
    if res.get("resourceType") == "Bundle" and res.get("type") in ("searchset", "history"):
        return [e["resource"] for e in res.get("entry", []) if isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") != "OperationOutcome"]
    return [res]


class Auditor:
    def __init__(self, server: FhirServer) -> None:
        self.recorder = AuditRecorder(server.uow, background=server.settings.audit_background)
        hooks = server.hooks
        hooks.register(HookPoint.BEFORE_VALIDATE, self.guard)
        hooks.register(HookPoint.BEFORE_COMMIT, self.guard)
        hooks.register(HookPoint.BEFORE_COMMIT, self.on_write)

    # --- FhirServer.handle / FhirServer.route --------------------------------------------------------------

    def handle(self, req: FhirRequest, inner: Callable[[FhirRequest], FhirResponse]) -> FhirResponse:
        state = _RequestState(actor_of(req.access, req.client_address))
        token = _STATE.set(state)
        try:
            resp = inner(req)
        finally:
            _STATE.reset(token)
        what = classify(req.method, req.path)
        if what is None:
            return resp
        if what.code == "transaction":  # the Bundle as a whole; its entries were audited one by one
            btype = (resp.resource or {}).get("type", "")
            code = "batch" if btype == "batch-response" or (not btype and _says_batch(req)) else "transaction"
            self.recorder.record(Record(interaction(code), "E", resp.status, state.actor))
        elif resp.status >= 400 and not state.failure_recorded:  # refused before or after the interaction ran
            self.recorder.record(Record(interaction(what.code), what.action, resp.status, state.actor,
                                        targets=list(what.targets)))
        return resp

    def route(self, req: FhirRequest, repo: Repository, inner: Callable[[], FhirResponse]) -> FhirResponse:
        what = classify(req.method, req.path)
        if what is None:
            return inner()
        state = _STATE.get()
        actor = state.actor if state is not None else SERVER
        writes_before = len(repo.events)
        try:
            if what.resource_type == AUDIT_EVENT and what.action in ("C", "U", "D") and what.code != "search":
                _check_audit_write(what.action, repo.access)
            resp = inner()
        except FhirError as exc:
            self.recorder.record(self._record(req, what, exc.status, actor, []))
            if state is not None:
                state.failure_recorded = True
            raise
        if what.action in ("R", "E") or len(repo.events) == writes_before or resp.status >= 400:
            # Writes that changed something were audited in their transaction (on_write); the rest here.
            self.recorder.record(self._record(req, what, resp.status, actor, returned(resp)))
        return resp

    def _record(self, req: FhirRequest, what: Interaction, status: int, actor: Actor,
                resources: list[dict[str, Any]]) -> Record:
        return Record(interaction(what.code), what.action, status, actor, targets=list(what.targets),
                      resources=resources if what.reads else [],
                      query=query_text(req) if what.searches else None)

    # --- hooks -------------------------------------------------------------------------------------------

    def on_write(self, event: WriteEvent, repo: Repository | None) -> None:
        """A write's AuditEvent, in the write's own transaction: one per kind of write (create, update,
        patch, delete) per unit of work, naming every resource it wrote, so a 16-resource transaction (an
        HL7 v2 lab result) costs a few AuditEvents, not sixteen."""
        if repo is None or RECORDING.get() or event.version is None:
            return
        writes = repo.finishers.get(AUDIT_EVENT)
        if not isinstance(writes, _Writes):
            state = _STATE.get()
            writes = _Writes(self.recorder, state.actor if state else SERVER)
            repo.finishers[AUDIT_EVENT] = writes
        writes.add(event)

    def guard(self, event: WriteEvent, repo: Repository | None) -> None:
        """AuditEvents are append-only, for everyone: no update, patch or delete, also inside Bundles."""
        if event.resource_type != AUDIT_EVENT or RECORDING.get():
            return
        _check_audit_write("C" if event.interaction == "create" else "U", repo.access if repo is not None else None)

    # --- outside the FHIR core: the web adapter's refusals, sign-in and tokens ---------------------------------

    def denied(self, method: str, path: str, status: int, address: str | None) -> None:
        """A request refused before it reached the core (401: no or a bad token)."""
        what = classify(method, path)
        if what is not None:
            self.recorder.record(Record(interaction(what.code), what.action, status, Actor(address=address),
                                        targets=list(what.targets)))

    def authentication(self, subtype: dict[str, str], status: int, actor: Actor, *,
                       targets: list[str] | None = None) -> None:
        """Sign-in (DCM 110122 Login), token issue / refresh, launch contexts and client registrations:
        DCM 110114 User Authentication."""
        self.recorder.record(Record(subtype, "E", status, actor, kind="110114", targets=list(targets or [])))


class _Writes:
    """The writes of one unit of work, grouped by interaction; recorded just before it commits."""

    def __init__(self, recorder: AuditRecorder, actor: Actor) -> None:
        self.recorder = recorder
        self.actor = actor
        self.records: dict[str, Record] = {}

    def add(self, event: WriteEvent) -> None:
        assert event.version is not None
        record = self.records.get(event.interaction)
        if record is None:
            record = self.records[event.interaction] = Record(
                interaction(event.interaction), _ACTIONS.get(event.interaction, "E"),
                201 if event.interaction == "create" else 200, self.actor)
        record.targets.append(event.version.reference)
        content = event.resource or (event.previous.content if event.previous else None)
        if content:
            record.resources.append(content)

    def __call__(self, repo: Repository) -> None:
        for record in self.records.values():
            self.recorder.write_now(repo, record)


def _check_audit_write(action: str, access: AccessPolicy | None) -> None:
    if action != "C":
        raise FhirError(405, NOT_SUPPORTED, "AuditEvents are append-only: they cannot be updated, patched or "
                                            "deleted", (AUDIT_EVENT,))
    if not may_record(access):
        raise FhirError(403, FORBIDDEN, "AuditEvents are recorded by the server; only a backend service granted "
                                        "system/AuditEvent.c may submit its own", (AUDIT_EVENT,))


def _says_batch(req: FhirRequest) -> bool:
    body = req.resource if req.resource is not None else None
    if body is not None:
        return body.get("type") == "batch"
    return b'"batch"' in (req.body or b"")[:4096]


def install(server: FhirServer) -> Auditor:
    return Auditor(server)
