"""The SMART authorization server: authlib's framework-agnostic AuthorizationServer, bound to our store.

Tokens: access tokens are RS256 JWTs (<= 30 minutes) carrying scope, launch context and the user's role;
refresh tokens are opaque and rotate; id_tokens (``openid``) carry ``fhirUser``. The web adapter
(``fhir_server/api/auth.py``) turns Starlette requests into ``SmartRequest`` and the (status, body,
headers) triples back into responses; nothing here knows a web framework.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from joserfc.errors import JoseError
from joserfc.jwt import JWTClaimsRegistry

from fhir_server.auth.access import AccessContext
from fhir_server.auth.clients import CURRENT_URLS, Client, PrivateKeyJwt
from fhir_server.auth.grants import AuthorizationCode, ClientCredentials, Pkce, RefreshToken
from fhir_server.auth.keys import KeyRing
from fhir_server.auth.scopes import parse_resource_scope, resource_scopes, split
from fhir_server.auth.store import AuthStore, User, new_secret
from fhir_server.config import Settings

ID_TOKEN_SECONDS = 3600
# audit: the client and user of the token ``issue`` last made in this context (the token endpoint reads it).
ISSUED: ContextVar[tuple[str, User | None] | None] = ContextVar("auth_issued", default=None)


class Payload(OAuth2Payload):
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {k: v[0] for k, v in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class SmartRequest(OAuth2Request):
    """An OAuth 2 request from query and form pairs; ``smart_context`` is the launch context chosen."""

    def __init__(self, method: str, uri: str, headers: Any, query: list[tuple[str, str]],
                 form: list[tuple[str, str]]) -> None:
        # Not OAuth2Request.__init__: its https check would turn a plain-http deployment (a LAN during
        # development; production terminates TLS at the proxy in front) into a 500 on every request.
        self.method, self.uri, self.headers, self._body = method, uri, headers, None
        self.client = self.auth_method = self.user = self.authorization_code = None
        self.refresh_token = self.credential = self._scope = None
        self._args = dict(query)
        self._form = dict(form)
        self.payload = Payload([*query, *form])
        self.smart_context: dict[str, Any] = {}

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


def restrict(scope: str, user: User | None) -> str:
    """Backend tokens keep only ``system/`` resource scopes (and ``launch``: an EHR backend that may create
    launch contexts); user tokens only ``patient/`` and ``user/``."""
    out = []
    for token in split(scope):
        parsed = parse_resource_scope(token)
        if parsed is None:
            if user is not None or token == "launch":
                out.append(token)
        elif (parsed.context == "system") == (user is None):
            out.append(token)
    return " ".join(out)


class SmartAuthorizationServer(AuthorizationServer):
    def __init__(self, settings: Settings, store: AuthStore, keys: KeyRing) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.keys = keys
        self.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(store))
        self.register_grant(AuthorizationCode, [Pkce(required=True)])
        self.register_grant(RefreshToken)
        self.register_grant(ClientCredentials)

    # --- authlib's framework hooks -------------------------------------------------------------------------

    def query_client(self, client_id: str) -> Client | None:
        row = self.store.client_row(client_id) if client_id else None
        if row is None or self.store.any_revoked([f"client:{client_id}"]):  # a revoked client is no client
            return None
        return Client.from_row(row)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        pass  # access tokens are self-contained JWTs; refresh tokens are saved when issued

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    # --- tokens --------------------------------------------------------------------------------------------

    def issue(self, client: Client, user: User | None, scope: str, context: dict[str, Any], *,
              family_id: str | None = None) -> dict[str, Any]:
        urls = CURRENT_URLS.get()
        ISSUED.set((client.client_id, user))
        scope = restrict(scope, user)
        tokens = split(scope)
        issued = int(time.time())
        lifetime = self.settings.auth_access_token_seconds
        claims: dict[str, Any] = {"iss": urls.issuer, "aud": urls.issuer, "sub": user.id if user else client.client_id,
                                  "client_id": client.client_id, "scope": scope, "jti": uuid.uuid4().hex,
                                  "iat": issued, "exp": issued + lifetime}
        if user is not None:
            claims["role"] = user.role
            if user.fhir_user:
                claims["fhirUser"] = user.fhir_user
        for key in ("patient", "encounter"):
            if context.get(key):
                claims[key] = context[key]
        wants_refresh = user is not None and ("offline_access" in tokens or "online_access" in tokens)
        if wants_refresh:
            family_id = family_id or uuid.uuid4().hex
        if family_id:
            claims["fam"] = family_id
        token: dict[str, Any] = {"access_token": self.keys.sign(claims), "token_type": "Bearer",
                                 "expires_in": lifetime, "scope": scope}
        for key in ("patient", "encounter"):
            if context.get(key):
                token[key] = context[key]
        if user is not None:
            if user.fhir_user and "fhirUser" in tokens:
                token["fhirUser"] = user.fhir_user
            if context.get("patient"):
                token["need_patient_banner"] = bool(context.get("need_patient_banner", True))
            if self.settings.auth_smart_style_url:
                token["smart_style_url"] = self.settings.auth_smart_style_url
            if "openid" in tokens:
                token["id_token"] = self._id_token(client, user, context, tokens, issued)
        if wants_refresh and family_id and user is not None:
            refresh = new_secret()
            self.store.save_refresh(refresh, family_id, client.client_id, user.id, scope, context,
                                    self.settings.auth_refresh_token_days)
            token["refresh_token"] = refresh
        return token

    def _id_token(self, client: Client, user: User, context: dict[str, Any], tokens: list[str], issued: int) -> str:
        urls = CURRENT_URLS.get()
        claims: dict[str, Any] = {"iss": urls.issuer, "sub": user.id, "aud": client.client_id, "iat": issued,
                                  "exp": issued + ID_TOKEN_SECONDS, "preferred_username": user.username}
        if context.get("nonce"):
            claims["nonce"] = context["nonce"]
        if "fhirUser" in tokens and user.fhir_user:
            claims["fhirUser"] = f"{urls.issuer}/{user.fhir_user}"
        return self.keys.sign(claims)

    def verify_access_token(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid, unexpired, unrevoked access token of ours; None for anything else
        (a tampered signature, ``alg: none``, another issuer, an id_token, a revoked token or family)."""
        urls = CURRENT_URLS.get()
        try:
            claims = self.keys.verify(token)
            JWTClaimsRegistry(leeway=5, iss={"essential": True, "value": urls.issuer},
                              aud={"essential": True, "value": urls.issuer},
                              exp={"essential": True}, jti={"essential": True}).validate(claims)
        except (JoseError, ValueError):
            return None
        # The token itself, its sign-in (refresh family), its client (revoked) and its user (deactivated):
        # fhir_server/auth/manage.py.
        revocable = [str(claims["jti"]), f"client:{claims.get('client_id')}", f"user:{claims.get('sub')}"] + \
            ([f"fam:{claims['fam']}"] if claims.get("fam") else [])
        if self.store.any_revoked(revocable):
            return None
        return claims

    def access_context(self, claims: dict[str, Any]) -> AccessContext:
        return AccessContext(tuple(resource_scopes(claims.get("scope"))), claims.get("role"),
                             claims.get("patient"), claims.get("fhirUser"),
                             f"{claims.get('client_id')} {claims.get('sub')}",
                             tuple(t for t in split(claims.get("scope")) if parse_resource_scope(t) is None))

    # --- RFC 7662 / RFC 7009 ---------------------------------------------------------------------------------

    def introspect(self, token: str, caller: Client) -> dict[str, Any]:
        """RFC 7662 for the client the token was issued to, or a registered resource server; anyone else
        learns only ``active: false`` (as for an unknown token, so nothing leaks)."""
        result = self._introspect(token)
        if result["active"] and result.get("client_id") != caller.client_id and not caller.resource_server:
            return {"active": False}
        return result

    def _introspect(self, token: str) -> dict[str, Any]:
        claims = self.verify_access_token(token)
        if claims is not None:
            out = {"active": True, "token_type": "Bearer"}
            keys = ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "patient", "encounter", "fhirUser")
            out.update({k: claims[k] for k in keys if k in claims})
            return out
        row = self.store.refresh_row(token)
        if row is not None and not row.revoked and row.rotated_at is None and row.expires_at > datetime.now(UTC) \
                and not self.store.family_revoked(row.family_id):
            return {"active": True, "token_type": "refresh_token", "scope": row.scope, "client_id": row.client_id,
                    "exp": int(row.expires_at.timestamp())}
        return {"active": False}

    def revoke(self, token: str, client: Client) -> None:
        """Revoke a refresh token (its whole family) or an access token of this client; unknown: no-op."""
        row = self.store.refresh_row(token)
        if row is not None:
            if row.client_id == client.client_id:
                self.store.revoke_family(row.family_id)
            return
        claims = self.verify_access_token(token)
        if claims is not None and claims.get("client_id") == client.client_id:
            self.store.revoke(str(claims["jti"]), datetime.fromtimestamp(int(claims["exp"]) + 60, UTC))
