"""Every outbox topic, registered in one place: the API process (in-process dispatcher) and the celery
worker both call ``install_outbox_topics``, so whichever of them runs delivers every topic.

A topic install puts its BEFORE_COMMIT hook (which enqueues) on the server and its handler (which
delivers) on the dispatcher. Add new topics here, not in app.py or the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.outbox import OutboxDispatcher


def install_outbox_topics(server: FhirServer, dispatcher: OutboxDispatcher) -> None:
    from interfaces.mllp.outbound import install as install_hl7_orders

    install_hl7_orders(server, dispatcher)  # ServiceRequests for MLLP labs go out as ORM^O01
    from fhir_server.subscriptions import install as install_subscriptions

    install_subscriptions(server, dispatcher)  # Subscription matching hooks + rest-hook handshake/notifications
    from interfaces.claims.setup import install as install_claims

    install_claims(server, dispatcher)  # HCX / NHCX requests out and callbacks in, when claims are configured
    from interfaces.abdm.service import install as install_abdm

    install_abdm(server, dispatcher)  # ABDM gateway callbacks, data pushes, erasures (when configured)
    server.search.install(dispatcher)  # full text to Elasticsearch, when FHIR_ELASTICSEARCH_URL is set
    from fhir_server.workflows.notifications import install_delivery as install_notifications

    install_notifications(server, dispatcher)  # patient e-mail / SMS and the reminder check (FHIR_WORKFLOWS)
