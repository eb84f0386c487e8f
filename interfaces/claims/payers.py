"""The one ``ClaimsGateway`` a server holds: the HCX / NHCX gateway for participant codes, FHIR-native payers
for FHIR base URLs (``Cycle.payer`` / ``Outgoing.recipient`` say which). Both speak through the same outbox
handler (interfaces/claims/outbound.py); their answers are applied by the same code (apply.py)."""

from __future__ import annotations

from typing import Any

from interfaces.claims.fhir_payer import FhirPayerGateway, is_fhir_payer
from interfaces.claims.gateway import ClaimsGateway, HcxGateway, Outgoing, Refused
from interfaces.claims.protocol import ERR_INVALID_RECIPIENT


class Payers:
    def __init__(self, hcx: HcxGateway | None, fhir: FhirPayerGateway) -> None:
        self.hcx = hcx
        self.fhir = fhir
        self.participant_code = hcx.participant_code if hcx is not None else fhir.participant_code

    def gateway(self, recipient: str) -> ClaimsGateway:
        if is_fhir_payer(recipient):
            return self.fhir
        if self.hcx is None:
            raise Refused(ERR_INVALID_RECIPIENT, "no HCX gateway is configured (FHIR_CLAIMS_GATEWAY_URL)")
        return self.hcx

    def send(self, message: Outgoing) -> dict[str, Any]:
        return self.gateway(message.recipient).send(message)

    def open(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if body.get("resourceType"):  # a FHIR payer's answer
            return self.fhir.open(body)
        if self.hcx is None:
            raise Refused(ERR_INVALID_RECIPIENT, "no HCX gateway is configured")
        return self.hcx.open(body)
