"""ABDM configuration (environment, prefix FHIR_ABDM_). ABDM is on when a gateway URL and a HIP or HIU id are
set; otherwise nothing is mounted and no topic is registered."""

from __future__ import annotations

from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


class AbdmSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_ABDM_", env_file=".env", extra="ignore")

    # HIE-CM gateway, API v3: https://dev.abdm.gov.in/api/hiecm (sandbox), https://apis.abdm.gov.in/api/hiecm
    gateway_url: str | None = None
    client_id: str = ""  # the bridge's client credentials, issued by NHA on registration
    client_secret: SecretStr = SecretStr("")
    # Seals our HIU's ephemeral private keys in the tenant's store until the HIP's push comes (keystore.py);
    # empty: derived from client_secret. Changing it strands only the pulls in flight.
    key_secret: SecretStr = SecretStr("")
    cm_id: str = "sbx"  # X-CM-ID: "sbx" in the sandbox, "abdm" in production
    hip_id: str | None = None  # our facility's HFR id, as a HIP (None: not a HIP)
    hip_name: str = "Hospital"
    hiu_id: str | None = None  # our id as a HIU (None: not a HIU)
    # Where our endpoints live: the gateway calls {public_url}{base_path}/api/v3/... (register
    # {public_url}{base_path} as the bridge URL).
    base_path: str = "/abdm"
    public_url: str | None = None  # e.g. https://hospital.example; our HIU's dataPushUrl is built from it
    # Link OTPs go to the patient's phone through this SMS/notification webhook (POST {"to","message"}).
    otp_webhook_url: str | None = None
    otp_seconds: int = 600
    # A new care context of a patient without an ABHA address: the gateway texts them the deep link to link
    # this hospital (sms/notify2) when they have a phone number.
    sms_deep_link: bool = True
    # Check the gateway's RS256 JWT on every incoming call against {gateway_url}/gateway/v3/certs.
    verify_gateway_token: bool = True
    gateway_audience: str = "account"  # the token's aud must name it ("": not checked)
    # The consent manager's signature on consent artefacts (notify, on-fetch), checked against the gateway's
    # keys: SHA256withRSA over the compact JSON of consentDetail, base64.
    verify_consent_signature: bool = True
    # Refresh the session token this long before it expires.
    token_refresh_margin_seconds: float = 120.0
    entries_per_page: int = 10  # documents per data-push page
    http_timeout_seconds: float = 30.0
    # Identifier.system of our own medical record numbers (discovery by an unverified MR identifier).
    mr_system: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.gateway_url) and bool(self.hip_id or self.hiu_id)


_CONFIGURED: WeakKeyDictionary[FhirServer, AbdmSettings] = WeakKeyDictionary()


def configure(server: FhirServer, settings: AbdmSettings) -> None:
    """Give one server its ABDM settings (tests, embedding); otherwise they come from the environment."""
    _CONFIGURED[server] = settings


def settings_for(server: FhirServer) -> AbdmSettings:
    found = _CONFIGURED.get(server)
    if found is None:
        found = _CONFIGURED[server] = AbdmSettings()
    return found
