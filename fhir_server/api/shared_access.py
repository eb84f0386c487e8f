"""A token of another hospital on this server, at this hospital's URL (issue 13 item 6): worth something only
through an active, unexpired share of one patient from this hospital to the token's, and then only for a
clinical user, only within that patient's compartment here, and at most what the share's mode allows.

Read from the platform at every request (no caching): a revocation or an expiry holds from the next request.
Each use is audited here as usual (the FHIR request) and in the user's own hospital (naming the share).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from fhir_server.api.tenants import tenant_urls
from fhir_server.audit.classify import classify
from fhir_server.audit.codes import own
from fhir_server.audit.events import Actor, Record
from fhir_server.auth.access import AccessContext
from fhir_server.auth.clients import Urls
from fhir_server.auth.scopes import ResourceScope
from fhir_server.errors import FORBIDDEN, Issue, operation_outcome
from fhir_server.tenancy.model import CODE, DEFAULT, TenantStatus
from fhir_server.tenancy.shares import CLINICAL_ROLES, MODES, Share, ShareStore
from fhir_server.tenancy.stacks import Tenants

if TYPE_CHECKING:
    from fhir_server.api.auth import SmartAuth

SHARE_USED = own("patient-share-used", "A patient shared by another hospital was accessed through the share")


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a JWT claims, before any check: only to choose whose keys to check it with."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def _forbidden(message: str) -> Response:
    return Response(orjson.dumps(operation_outcome([Issue(FORBIDDEN, message)])), status_code=403,
                    media_type="application/fhir+json")


def _pick(shares: list[Share], request: Request) -> Share | None:
    """The share a request uses when several patients are shared with the caller's hospital: the one whose
    patient the request names (``Patient/[id]`` in the path, or ``patient=`` / ``subject=``)."""
    if len(shares) == 1:
        return shares[0]
    named = {v.rsplit("/", 1)[-1] for k, v in request.query_params.multi_items() if k in ("patient", "subject")}
    parts = request.url.path.split("/")
    named |= {parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "Patient"}
    chosen = [s for s in shares if s.patient in named]
    return chosen[0] if len(chosen) == 1 else None


def scopes_through(share: Share, granted: tuple[ResourceScope, ...]) -> tuple[ResourceScope, ...]:
    """The token's own scopes, held to the shared patient's compartment and the share's mode."""
    allowed = MODES[share.mode]
    out: list[ResourceScope] = []
    for scope in granted:
        if scope.context not in ("user", "patient"):
            continue
        letters = "".join(c for c in scope.permissions if c in allowed)
        if letters:
            out.append(ResourceScope("patient", scope.resource_type, letters, scope.constraints))
    return tuple(out)


async def shared_access(auth: SmartAuth, request: Request, token: str, path: str) -> AccessContext | Response | None:
    """None: not another hospital's token through a share (the caller answers 401 as for any bad token)."""
    from fhir_server.api.auth import _call

    code = auth.settings.tenant
    here_root, here_base = tenant_urls(request, auth.settings.base_url)
    iss = unverified_issuer(token)
    server_base = here_base.removesuffix(f"/{code}") if code != DEFAULT else here_base
    if iss is None or not iss.startswith(server_base + "/"):
        return None
    other = iss[len(server_base) + 1:]
    tenants: Tenants = request.app.state.tenants
    if other == code or not CODE.match(other) or tenants.status(other) != TenantStatus.ACTIVE:
        return None
    store = ShareStore(tenants.default.fhir.engine)
    shares = await _call(auth.urls(request), store.active, code, other)
    if not shares:
        return None
    theirs: SmartAuth = tenants.stack(other).extras["auth"]
    root = here_root.removesuffix(f"/t/{code}") if code != DEFAULT else here_root
    urls = Urls.at(f"{root}/t/{other}", iss)
    claims = await _call(urls, theirs.server.verify_access_token, token)
    if claims is None:
        return None
    theirs_access = theirs.server.access_context(claims)
    if theirs_access.role not in CLINICAL_ROLES:
        return _forbidden(f"Only {', '.join(sorted(CLINICAL_ROLES))} users of {other} may use a patient "
                          "shared with it")
    share = _pick(shares, request)
    if share is None:
        return _forbidden("Several patients are shared with your hospital: name one (Patient/[id] or patient=)")
    fhir_user = theirs_access.fhir_user
    access = AccessContext(scopes_through(share, theirs_access.scopes), theirs_access.role, share.patient,
                           f"{iss}/{fhir_user}" if fhir_user and "://" not in fhir_user else fhir_user,
                           theirs_access.subject)
    _audit_in_theirs(theirs, request, path, share, access, claims, here_base)
    return access


def _audit_in_theirs(theirs: SmartAuth, request: Request, path: str, share: Share, access: AccessContext,
                     claims: dict[str, Any], here: str) -> None:
    """The user's own hospital learns what its user did through the share (its Consent, the request)."""
    audit = theirs.fhir.audit
    if audit is None:
        return
    what = classify(request.method, path)
    targets = [f"Consent/{share.target_consent}"] + [f"{here}/{t}" for t in (what.targets if what else ())]
    actor = Actor(request.client.host if request.client else None, str(claims.get("client_id") or "") or None,
                  str(claims.get("sub") or "") or None, None, access.fhir_user, access.role)
    audit.recorder.record(Record(SHARE_USED, what.action if what else "E", 200, actor, targets=targets))
