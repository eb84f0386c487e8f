"""The OAuth 2 grants we allow, as small authlib grant classes (authorization code + PKCE, refresh token
with rotation, client credentials for SMART Backend Services)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, grants
from authlib.oauth2.rfc7636 import CodeChallenge

from fhir_server.auth.store import User

if TYPE_CHECKING:
    from fhir_server.auth.authorization import SmartAuthorizationServer

USER_CLIENT_AUTH = ["none", "client_secret_basic", "private_key_jwt"]


@dataclass(frozen=True)
class CodeRecord:
    row: Any

    def get_redirect_uri(self) -> str | None:
        return self.row.redirect_uri or None

    def get_scope(self) -> str:
        return str(self.row.scope)

    @property
    def code_challenge(self) -> str | None:
        return self.row.code_challenge

    @property
    def code_challenge_method(self) -> str | None:
        return self.row.code_challenge_method


@dataclass(frozen=True)
class RefreshRecord:
    row: Any

    def check_client(self, client: Any) -> bool:
        return bool(self.row.client_id == client.client_id)

    def get_scope(self) -> str:
        return str(self.row.scope)


class Pkce(CodeChallenge):
    """RFC 7636 with S256 only, and required for public clients already at the authorization request."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if grant.request.client.public and not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Unsupported 'code_challenge_method': only S256 is accepted")
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCode(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = USER_CLIENT_AUTH
    server: SmartAuthorizationServer

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        self.server.store.save_code(code, {
            "client_id": request.client.client_id, "user_id": request.user.id,
            "redirect_uri": data.get("redirect_uri") or "", "scope": request.scope or "",
            "code_challenge": data.get("code_challenge"), "code_challenge_method": data.get("code_challenge_method"),
            "context": getattr(request, "smart_context", {}), "family_id": uuid.uuid4().hex})

    def query_authorization_code(self, code: str, client: Any) -> CodeRecord | None:
        row = self.server.store.claim_code(code, client.client_id)
        return CodeRecord(row) if row is not None else None

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        pass  # claimed (marked used) atomically when it was queried

    def authenticate_user(self, authorization_code: CodeRecord) -> User | None:
        return self.server.store.user(authorization_code.row.user_id)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        record: CodeRecord = self.request.authorization_code
        user = self.authenticate_user(record)
        if user is None:
            raise InvalidGrantError("The user of this code no longer exists")
        token = self.server.issue(self.request.client, user, record.get_scope(), dict(record.row.context),
                                  family_id=record.row.family_id)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class RefreshToken(grants.RefreshTokenGrant):
    """Rotation: every refresh returns a new refresh token; presenting an exchanged one again is treated as
    theft and revokes the whole family (all refresh tokens and access tokens descending from one login)."""

    TOKEN_ENDPOINT_AUTH_METHODS = USER_CLIENT_AUTH
    server: SmartAuthorizationServer

    def authenticate_token_endpoint_client(self) -> Any:
        """A public client may refresh without naming itself: the refresh token already names its client
        (RFC 6749 section 6 requires authentication only of confidential clients; the SMART JavaScript
        client sends no client_id). A token of a confidential client still needs that client's credentials."""
        form = self.request.form
        if (not self.request.headers.get("Authorization") and not form.get("client_id")
                and not form.get("client_assertion")):
            row = self.server.store.refresh_row(form.get("refresh_token", ""))
            client = self.server.query_client(row.client_id) if row is not None else None
            if client is not None and client.public:
                self.server.send_signal("after_authenticate_client", client=client, grant=self)
                return client
        return super().authenticate_token_endpoint_client()

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        row = self.server.store.refresh_row(refresh_token)
        if row is None or row.revoked or self.server.store.family_revoked(row.family_id):
            return None
        if row.rotated_at is not None:
            self.server.store.revoke_family(row.family_id)
            return None
        return RefreshRecord(row)

    def authenticate_user(self, refresh_token: RefreshRecord) -> User | None:
        return self.server.store.user(refresh_token.row.user_id) if refresh_token.row.user_id else None

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        row = self.server.store.rotate_refresh(self.request.form.get("refresh_token", ""))
        if row is None:  # exchanged concurrently, or revoked meanwhile
            raise InvalidGrantError("The refresh token is no longer valid")
        user = self.server.store.user(row.user_id) if row.user_id else None
        if user is None:
            raise InvalidGrantError("The user of this token no longer exists")
        scope = self.request.payload.scope or row.scope
        token = self.server.issue(self.request.client, user, scope, dict(row.context), family_id=row.family_id)
        return 200, token, self.TOKEN_RESPONSE_HEADER

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        pass  # rotated atomically in create_token_response


class ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]
    server: SmartAuthorizationServer

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client = self.request.client
        scope = client.get_allowed_scope(self.request.payload.scope)
        token = self.server.issue(client, None, scope, {})
        return 200, token, self.TOKEN_RESPONSE_HEADER
