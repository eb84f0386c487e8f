"""A tenant's limits, enforced as they are reached: the N+1th Patient (or user) is refused, naming the limit."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from fhir_server.config import Settings
from fhir_server.errors import BUSINESS_RULE, FhirError
from fhir_server.hooks import HookPoint, WriteEvent
from fhir_server.storage.models import ResourceRow
from fhir_server.tenancy.model import DEFAULT

if TYPE_CHECKING:
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.repository import Repository
    from fhir_server.tenancy.store import TenantStore


def limit_reached(limit: str, value: int, what: str) -> FhirError:
    return FhirError(422, BUSINESS_RULE, f"This hospital's limit {limit} ({value}) is reached: no more {what} "
                                         "can be created (the platform administration can raise it)")


def install(server: FhirServer, store: TenantStore) -> None:
    code = server.settings.tenant

    def patient_limit(event: WriteEvent, repo: Repository | None) -> None:
        if event.resource_type != "Patient" or event.interaction != "create" or repo is None:
            return
        tenant = store.get(code)
        if tenant is None or tenant.max_patients is None:
            return
        # repo.execute sends the deferred inserts first: the new Patient (and any earlier in a Bundle) counts.
        count = repo.execute(select(func.count()).select_from(ResourceRow).where(
            ResourceRow.resource_type == "Patient", ResourceRow.deleted.is_(False))).scalar_one()
        if count > tenant.max_patients:
            raise limit_reached("max-patients", tenant.max_patients, "Patients")

    server.hooks.register(HookPoint.BEFORE_COMMIT, patient_limit)


def user_limit(store: TenantStore, code: str) -> int | None:
    tenant = store.get(code)
    return tenant.max_users if tenant is not None else None


def command_user_limit(settings: Settings) -> Callable[[], int | None] | None:
    """The user limit for a command run with --tenant (``users create``)."""
    if settings.tenant == DEFAULT:
        return None
    from fhir_server.storage.database import make_engine
    from fhir_server.tenancy.store import TenantStore

    store = TenantStore(make_engine(settings.model_copy(update={"tenant": DEFAULT})), settings)
    return partial(user_limit, store, settings.tenant)
