"""SMART discovery: ``.well-known/smart-configuration`` and CapabilityStatement ``rest.security``."""

from __future__ import annotations

from typing import Any

from fhir_server.auth.clients import Urls

CAPABILITIES = [
    "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
    "client-confidential-asymmetric", "context-passthrough-banner", "context-passthrough-style",
    "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient", "sso-openid-connect",
    "permission-offline", "permission-online", "permission-patient", "permission-user", "permission-v1",
    "permission-v2", "authorize-post",
]
SCOPES = ["openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
          "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds",
          "patient/*.read", "user/*.read", "user/*.write", "system/*.read"]
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def smart_configuration(urls: Urls) -> dict[str, Any]:
    return {
        "issuer": urls.issuer,
        "jwks_uri": urls.jwks,
        "authorization_endpoint": urls.authorize,
        "token_endpoint": urls.token,
        "introspection_endpoint": urls.introspect,
        "revocation_endpoint": urls.revoke,
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": SCOPES,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def capability_security(urls: Urls) -> dict[str, Any]:
    """The block the PyPI ``fhirclient`` (and older SMART clients) read the endpoints from."""
    return {
        "cors": True,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile"}],
        "extension": [{"url": OAUTH_URIS, "extension": [
            {"url": "authorize", "valueUri": urls.authorize},
            {"url": "token", "valueUri": urls.token},
            {"url": "introspect", "valueUri": urls.introspect},
            {"url": "revoke", "valueUri": urls.revoke},
        ]}],
    }
