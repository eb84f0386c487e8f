"""Wiring claims into a server when ``FHIR_CLAIMS_GATEWAY_URL`` (HCX / NHCX) or ``FHIR_CLAIMS_FHIR_CLIENT_ID``
(FHIR-native payers) is set: the ``$submit`` operations (FhirServer), the outbox topics (in the API process and
the worker alike) and the HCX callback router (the web app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher


def register_claims(server: FhirServer) -> None:
    from interfaces.claims.fhir_payer import FhirPayerGateway
    from interfaces.claims.gateway import HcxGateway
    from interfaces.claims.operations import register
    from interfaces.claims.payers import Payers

    settings = server.settings
    server.claims = Payers(HcxGateway(settings) if settings.claims_gateway_url else None,
                           FhirPayerGateway(settings))
    register(server)


def install(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    from interfaces.claims.payers import Payers

    payers = server.claims
    if not isinstance(payers, Payers):
        return
    from interfaces.claims import fhir_payer, inbound, outbound

    dispatcher.register(outbound.TOPIC, outbound.RequestSender(server, payers))
    dispatcher.register(fhir_payer.POLL_TOPIC, fhir_payer.Poller(server, payers.fhir))  # queued FHIR answers
    if payers.hcx is not None:
        dispatcher.register(inbound.TOPIC, inbound.CallbackReceiver(server, payers, server.settings))


def mount(app: FastAPI, server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    from interfaces.claims.payers import Payers

    if not isinstance(server.claims, Payers) or server.claims.hcx is None:
        return
    from interfaces.claims.api import router

    app.include_router(router(server))
