"""Wiring claims into a server when ``FHIR_CLAIMS_GATEWAY_URL`` is set: the ``$submit`` operations
(FhirServer), the outbox topics (in the API process and the worker alike) and the callback router (the
web app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher


def register_claims(server: FhirServer) -> None:
    from interfaces.claims.gateway import HcxGateway
    from interfaces.claims.operations import register

    server.claims = HcxGateway(server.settings)
    register(server)


def install(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    if server.claims is None:
        return
    from interfaces.claims import fhir_payer, inbound, outbound

    dispatcher.register(outbound.TOPIC, outbound.RequestSender(server, server.claims))
    dispatcher.register(inbound.TOPIC, inbound.CallbackReceiver(server, server.claims, server.settings))
    dispatcher.register(fhir_payer.TOPIC, fhir_payer.FhirPayerSender(server))  # FHIR-native payers (PAS)


def mount(app: FastAPI, server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    if server.claims is None:
        return
    from interfaces.claims.api import router

    app.include_router(router(server, dispatcher))
