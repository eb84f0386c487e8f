"""The gateway's bearer on our callbacks (HCX 0.9 api-security.md "Securing Participant System APIs";
hcx-platform ``JWTUtil``): an RS256 JWT with ``jti``, ``iss`` = ``sub`` = the HCX's registry code, ``iat``,
``exp``, verified with the gateway's public key when ``FHIR_CLAIMS_GATEWAY_CERT`` is configured."""

from __future__ import annotations

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from joserfc.jwt import JWTClaimsRegistry

from interfaces.claims.envelope import public_key
from interfaces.claims.gateway import pem_text


class GatewayBearer:
    def __init__(self, cert: str, issuer: str | None) -> None:
        self.key = RSAKey.import_key(public_key(pem_text(cert)))
        claims: dict[str, dict[str, object]] = {"exp": {"essential": True}, "jti": {"essential": True}}
        if issuer:
            claims["iss"] = {"essential": True, "value": issuer}
        self.registry = JWTClaimsRegistry(leeway=60, **claims)  # type: ignore[arg-type]

    def verify(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        try:
            decoded = jwt.decode(token.strip(), self.key, algorithms=["RS256"])
            self.registry.validate(decoded.claims)
        except (JoseError, ValueError):
            return False
        return True
