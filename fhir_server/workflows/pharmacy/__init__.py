"""Medication safety and pharmacy stock (issue 18 items 1 and 2; docs/workflows/pharmacy.md).

``install(server)`` hangs everything off that FhirServer: the knowledge tables' cache (knowledge.py), the
write hooks on MedicationRequest (safety.py), MedicationDispense (dispense.py), SupplyDelivery and the stock
ledger's Basic records (stock.py), the alerts (alerts.py) and ``$pharmacy-stock-check``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.storage.repository import Repository
from fhir_server.workflows.pharmacy import alerts, dispense, safety, stock
from fhir_server.workflows.pharmacy.knowledge import Knowledge

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer


def install(server: FhirServer) -> None:
    knowledge = Knowledge()  # per server (tenant): its own cache of the tables it has stored

    def before_validate(event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type == "MedicationRequest" and event.resource is not None:
            safety.before_validate(event, repo, knowledge)
        elif event.resource_type == "MedicationDispense":
            dispense.before_validate(event, repo)
        elif event.resource_type == "Basic":
            stock.guard_ledger(event, repo)

    def before_commit(event: WriteEvent, repo: Repository | None) -> None:
        if repo is None:
            return
        if event.resource_type == "MedicationRequest":
            safety.before_commit(event, repo, knowledge)
        elif event.resource_type == "MedicationDispense":
            moved = dispense.before_commit(event, repo)
            if moved:
                alerts.review(repo, knowledge, moved[0], moved[1], moved[2])
        elif event.resource_type == "SupplyDelivery":
            received = stock.receive(event, repo)
            if received:
                alerts.review(repo, knowledge, received[0], [received[1]], {received[2]})

    def guard_delete(event: WriteEvent, repo: Repository | None) -> None:
        # a delete has no BEFORE_VALIDATE (nothing to validate): its rules run before its tombstone's hooks
        if event.interaction == "delete" and event.resource_type == "MedicationDispense":
            dispense.before_validate(event, repo)
        elif event.interaction == "delete" and event.resource_type == "Basic":
            stock.guard_ledger(event, repo)

    server.hooks.register(HookPoint.BEFORE_VALIDATE, before_validate)
    server.hooks.register(HookPoint.BEFORE_COMMIT, guard_delete, first=True)
    server.hooks.register(HookPoint.BEFORE_COMMIT, before_commit)
    server.operations.register(alerts.stock_check_operation(knowledge))
