"""Sharing a patient with another hospital (issue 13 item 6): ``Patient/[id]/$share`` in the sharing
hospital, ``Consent/[id]/$accept`` / ``$reject`` in the receiving one, ``Consent/[id]/$revoke`` back in the
sharing one, ``$shares`` to list them. The share is a Consent in both hospitals and a row on the platform
(tenancy/shares.py); what a receiving user may then do is decided per request (api/shared_access.py)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from fhir_server.auth.access import AccessContext
from fhir_server.errors import CONFLICT, FORBIDDEN, INVALID, NOT_FOUND, NOT_SUPPORTED, REQUIRED, FhirError
from fhir_server.rest.operations import Operation
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository
from fhir_server.tenancy.engines import tenant_of
from fhir_server.tenancy.model import DEFAULT, TenantStatus
from fhir_server.tenancy.shares import MODES, SHARE_TOPIC, SHARING_ROLES, Share, ShareStatus, ShareStore
from fhir_server.tenancy.stacks import Tenants, TenantStack

log = logging.getLogger(__name__)
MAX_DAYS = 365
SHARE_SYSTEM = "urn:ietf:rfc:3986"  # the share's id as a urn:uuid
TENANT_SYSTEM = "urn:fhir-server:tenant"  # a hospital on this server, by its tenant code
REASON_URL = "urn:fhir-server:patient-share-reason"
DEFINITION = "urn:fhir-server:OperationDefinition/"
# Consent.status for each share status.
CONSENT_STATUS = {ShareStatus.PROPOSED: "proposed", ShareStatus.ACTIVE: "active",
                  ShareStatus.REJECTED: "rejected", ShareStatus.REVOKED: "inactive"}


def tenant_base(base: str, code: str, other: str) -> str:
    """``other``'s FHIR base URL, from ``code``'s (both on this server)."""
    root = base.removesuffix(f"/{code}") if code != DEFAULT else base
    return root if other == DEFAULT else f"{root}/{other}"


def consent(share: Share, patient_reference: str, status: str) -> dict[str, Any]:
    actions = ["access"] + (["correct"] if share.mode == "read-write" else [])
    return {
        "resourceType": "Consent", "status": status,
        "identifier": [{"system": SHARE_SYSTEM, "value": f"urn:uuid:{share.id}"}],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient_reference},
        "dateTime": share.created.isoformat(),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "extension": [{"url": REASON_URL, "valueString": share.reason}],
        "provision": {
            "type": "permit",
            "period": {"start": share.created.isoformat(), "end": share.expires.isoformat()},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP"}]},
                       "reference": {"type": "Organization",
                                     "identifier": {"system": TENANT_SYSTEM, "value": share.target}}}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": a}]}
                       for a in actions],
        },
    }


def _params(req: FhirRequest) -> dict[str, str]:
    body = req.json_body() if req.body or req.resource is not None else None
    out = dict(req.query)
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        for p in body.get("parameter", []):
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(value, str):
                out[p["name"]] = value
    return out


def _require_role(repo: Repository, roles: frozenset[str], what: str) -> None:
    access = repo.access
    if isinstance(access, AccessContext) and access.role not in roles:
        raise FhirError(403, FORBIDDEN, f"{what} is for users with the role {' or '.join(sorted(roles))}", (what,))


def _instance(name: str, resource_type: str, resource_id: str | None) -> str:
    if not resource_id:
        raise FhirError(400, NOT_SUPPORTED, f"${name} runs on one {resource_type}: {resource_type}/[id]/${name}")
    return resource_id


def _in_line(repo: Repository, *, consent_id: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """A hospital's Consent of a share, created or moved to the share's status; written only if it differs,
    so a catch-up after a success changes nothing."""
    current = repo.current("Consent", consent_id)
    if current is not None and current.content is not None:
        if current.content.get("status") == wanted["status"]:
            return current.content
        wanted = {**current.content, "status": wanted["status"]}
    version, _ = repo.update("Consent", consent_id, wanted)
    return version.content or wanted


def follow(tenants: Tenants, share: Share, base: str, *, own: Repository | None = None) -> dict[str, Any]:
    """Both hospitals' Consents in line with ``share``'s row; ``base``: the sharing hospital's FHIR base.
    ``own``: the request's repository in one of the two (its Consent is written in the request's transaction
    and returned). The other hospital's is written now as well, but a failure there only waits for the
    outbox's catch-up (``SHARE_TOPIC``): the share itself is already committed."""
    status = CONSENT_STATUS[share.stored_status]
    sides = {share.source: (share.source_consent, f"Patient/{share.patient}"),
             share.target: (share.target_consent, f"{base}/Patient/{share.patient}")}
    own_code = tenant_of(own.conn) if own is not None else None
    written: dict[str, Any] = {}
    for code, (consent_id, patient_reference) in sides.items():
        wanted = consent(share, patient_reference, status)
        if code == own_code and own is not None:
            with own.acting_as(as_system("a patient share's Consent follows the share")):
                written = _in_line(own, consent_id=consent_id, wanted=wanted)
            continue
        try:
            tenants.stack(code).fhir.uow.run(partial(_in_line, consent_id=consent_id, wanted=wanted), write=True,
                                             access=as_system("a patient share's Consent follows the share"))
        except Exception:
            if own is None:
                raise  # the outbox's catch-up itself: retried with backoff
            log.warning("patient share %s: %s's Consent waits for the catch-up", share.id, code, exc_info=True)
    return written


def install_catch_up(tenants: Tenants) -> None:
    """The outbox topic that brings a share's Consents in line, on the default tenant's dispatcher (whose
    outbox sits beside the platform's tables). The API process and the worker both install it."""
    store = ShareStore(tenants.default.fhir.engine)

    def catch_up(share_id: str, payload: dict[str, Any]) -> None:
        share = store.get(share_id)
        if share is not None:
            follow(tenants, share, str(payload.get("base", "")))

    tenants.default.outbox.register(SHARE_TOPIC, catch_up)


class Sharing:
    """The share operations of one hospital (``stack``), reaching the others through ``tenants``."""

    def __init__(self, tenants: Tenants, stack: TenantStack) -> None:
        self.tenants = tenants
        self.code = stack.code
        self.store = ShareStore(tenants.default.fhir.engine)

    def share(self, req: FhirRequest, repo: Repository, _rtype: str | None, patient: str | None) -> FhirResponse:
        _require_role(repo, SHARING_ROLES, "$share")
        patient = _instance("share", "Patient", patient)
        repo.access.check_read(repo.read("Patient", patient))  # 404 / 403 as for a read
        params = _params(req)
        target = params.get("target", "")
        mode = params.get("mode", "read")
        if not target:
            raise FhirError(400, REQUIRED, "$share needs the target hospital (parameter target)", ("target",))
        if target == self.code or self.tenants.status(target) != TenantStatus.ACTIVE:
            raise FhirError(400, INVALID, f"target {target!r} is not another active hospital on this server",
                            ("target",))
        if mode not in MODES:
            raise FhirError(400, INVALID, f"mode must be one of {', '.join(MODES)}", ("mode",))
        now = datetime.now(UTC)
        try:
            expires = datetime.fromisoformat(params.get("expires", "").replace("Z", "+00:00"))
        except ValueError:
            raise FhirError(400, INVALID, "expires must be a dateTime with a time zone", ("expires",)) from None
        if expires.tzinfo is None or not now < expires <= now + timedelta(days=MAX_DAYS):
            raise FhirError(400, INVALID, f"expires must be in the future, at most {MAX_DAYS} days ahead, with a "
                                          "time zone", ("expires",))
        reason = params.get("reason", "").strip()
        if not reason:
            raise FhirError(400, REQUIRED, "$share needs a reason", ("reason",))
        if self.store.live(self.code, patient, target):
            raise FhirError(409, CONFLICT, f"Patient/{patient} is already shared with {target}", ("target",))
        sid = str(uuid.uuid4())
        share = Share(sid, self.code, patient, target, mode, expires.astimezone(UTC), reason[:1000],
                      ShareStatus.PROPOSED, sid, sid, now, now)
        base = req.base_url.rstrip("/")
        self.store.add(share, base)  # the share exists from here on; its Consents follow (shares.py)
        content = follow(self.tenants, share, base, own=repo)
        return FhirResponse(201, content, headers={"Location": f"{base}/Consent/{sid}"})

    def _answer(self, req: FhirRequest, repo: Repository, consent_id: str | None, to: ShareStatus) -> FhirResponse:
        consent_id = _instance("accept" if to == ShareStatus.ACTIVE else "reject", "Consent", consent_id)
        share = self.store.by_consent(self.code, consent_id)
        if share is None or share.target != self.code:
            raise FhirError(404, NOT_FOUND, f"Consent/{consent_id} is not a share proposed to this hospital")
        base = tenant_base(req.base_url.rstrip("/"), self.code, share.source)
        if not self.store.move(share.id, ShareStatus.PROPOSED, to, base):
            raise FhirError(409, CONFLICT, f"The share is {share.status().value.lower()}, not proposed", ("status",))
        return FhirResponse(200, follow(self.tenants, self.store.get(share.id) or share, base, own=repo))

    def accept(self, req: FhirRequest, repo: Repository, _t: str | None, cid: str | None) -> FhirResponse:
        return self._answer(req, repo, cid, ShareStatus.ACTIVE)

    def reject(self, req: FhirRequest, repo: Repository, _t: str | None, cid: str | None) -> FhirResponse:
        return self._answer(req, repo, cid, ShareStatus.REJECTED)

    def revoke(self, req: FhirRequest, repo: Repository, _t: str | None, cid: str | None) -> FhirResponse:
        _require_role(repo, SHARING_ROLES, "$revoke")
        cid = _instance("revoke", "Consent", cid)
        share = self.store.by_consent(self.code, cid)
        if share is None or share.source != self.code:
            raise FhirError(404, NOT_FOUND, f"Consent/{cid} is not a share made by this hospital")
        base = req.base_url.rstrip("/")
        for was in (ShareStatus.ACTIVE, ShareStatus.PROPOSED):
            if self.store.move(share.id, was, ShareStatus.REVOKED, base, unexpired=False):
                return FhirResponse(200, follow(self.tenants, self.store.get(share.id) or share, base, own=repo))
        raise FhirError(409, CONFLICT, f"The share is {share.status().value.lower()} already", ("status",))

    def shares(self, req: FhirRequest, _repo: Repository, _t: str | None, _i: str | None) -> FhirResponse:
        params = _params(req)
        direction = params.get("direction", "sent")
        if direction not in ("sent", "received"):
            raise FhirError(400, INVALID, "direction must be sent or received", ("direction",))
        wanted = params.get("status", "").upper()
        if wanted and wanted not in ShareStatus.__members__:
            raise FhirError(400, INVALID, f"status must be one of {', '.join(s.lower() for s in ShareStatus)}",
                            ("status",))
        found = [s for s in self.store.listed(self.code, direction) if not wanted or s.status().value == wanted]
        parts = [{"name": "share", "part": [{"name": k, "valueString": str(v)} for k, v in s.to_json().items()]}
                 for s in found]
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": parts})


def install(tenants: Tenants, stack: TenantStack) -> None:
    sharing = Sharing(tenants, stack)
    ops = stack.fhir.operations
    ops.register(Operation("share", sharing.share, DEFINITION + "share", types=frozenset({"Patient"}),
                           instance=True, affects_state=True))
    for name, handler in (("accept", sharing.accept), ("reject", sharing.reject)):
        ops.register(Operation(name, handler, DEFINITION + name, types=frozenset({"Consent"}), instance=True,
                               affects_state=True, admin=True))
    ops.register(Operation("revoke", sharing.revoke, DEFINITION + "revoke", types=frozenset({"Consent"}),
                           instance=True, affects_state=True))
    ops.register(Operation("shares", sharing.shares, DEFINITION + "shares", system=True, types=frozenset(),
                           read_only=True, admin=True))


def install_all(tenants: Tenants) -> None:
    """Every hospital of this process, those made later too."""
    install_catch_up(tenants)
    install(tenants, tenants.default)
    tenants.on_new.append(lambda stack: install(tenants, stack))
