"""The laboratory's rules (issue 18, items 3 and 4; docs/workflows/laboratory.md).

ServiceRequest -> Specimen (unique barcode, collected) -> Observation(s) -> DiagnosticReport, enforced in the
write hooks, so REST clients and the HL7 v2 listener (interfaces/mllp writes through the same FhirServer)
meet the same rules; ``_sort=priority`` ranks stat before routine; critical values alert the orderer;
turnaround time is recorded on each order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.workflows.laboratory.critical import CriticalValues, load_defaults
from fhir_server.workflows.laboratory.results import RESULT_TYPES, check_final, check_order_state, load_no_specimen
from fhir_server.workflows.laboratory.specimens import check_barcodes, link_to_orders
from fhir_server.workflows.laboratory.turnaround import record_turnaround

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository

SORT_ORDERS = Path(__file__).with_name("sort-orders.json")


def install_sort_orders(server: FhirServer, path: Path = SORT_ORDERS) -> None:
    for order in json.loads(path.read_text())["orders"]:
        server.search_registry.sort_orders[(order["resourceType"], order["param"])] = tuple(order["codes"])


def install(server: FhirServer) -> None:
    install_sort_orders(server)
    critical = CriticalValues(load_defaults())
    exempt = load_no_specimen()  # order categories that take no specimen (imaging, procedures)

    def before_validate(event: WriteEvent, repo: Repository | None) -> None:
        if repo is None:
            return
        if event.resource_type == "Specimen" and event.resource is not None:
            check_barcodes(event, repo)
        elif event.resource_type in RESULT_TYPES:
            check_final(event, repo)
            if event.resource is not None:
                check_order_state(event, repo, exempt)

    def before_commit(event: WriteEvent, repo: Repository | None) -> None:
        if repo is None:
            return
        if event.resource is None:  # a delete (it has no BEFORE_VALIDATE)
            if event.resource_type in RESULT_TYPES:
                check_final(event, repo)
            return
        if event.resource_type == "Observation":
            critical.after_write(event, repo)
        elif event.resource_type == "DiagnosticReport":
            record_turnaround(event, repo)
        elif event.resource_type == "Specimen":
            link_to_orders(event, repo)

    server.hooks.register(HookPoint.BEFORE_VALIDATE, before_validate)
    server.hooks.register(HookPoint.BEFORE_COMMIT, before_commit)
