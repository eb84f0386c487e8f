"""FhirServer: the framework-free FHIR core. ``handle(request) -> response`` for any FHIR REST call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine

from fhir_server.audit import Auditor
from fhir_server.audit import install as install_audit
from fhir_server.binary import BinaryStorage
from fhir_server.config import Settings
from fhir_server.errors import EXCEPTION, INVALID, FhirError, Issue, operation_outcome
from fhir_server.hooks import Hooks
from fhir_server.jobs.bulk_ops import register_bulk
from fhir_server.rest import bundle
from fhir_server.rest.integrity import install as install_integrity
from fhir_server.rest.metadata import capability_statement, with_security
from fhir_server.rest.operations import OperationRegistry
from fhir_server.rest.operations.everything import register as register_everything
from fhir_server.rest.request import REQUEST_BASE_URL, FhirRequest, FhirResponse, routing
from fhir_server.rest.router import READ_METHODS, route
from fhir_server.search.services import SearchServices
from fhir_server.search.summary import check_summary, shape
from fhir_server.storage.database import make_engine
from fhir_server.storage.repository import Finder, Repository
from fhir_server.storage.uow import UnitOfWork
from fhir_server.validation import ResourceValidator
from fhir_server.validation.setup import profiles_fingerprint, supported_profiles, with_profiles
from fhir_server.validation.setup import register as register_validation
from terminology.operations import register as register_terminology

if TYPE_CHECKING:
    from interfaces.claims.gateway import ClaimsGateway

log = logging.getLogger(__name__)


class FhirServer:
    def __init__(self, settings: Settings, engine: Engine | None = None, *, hooks: Hooks | None = None,
                 finder: Finder | None = None, validator: ResourceValidator | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings)
        self.hooks = hooks or Hooks()
        # search: registry (core + runtime SearchParameters), index and full-text writers, finder, $reindex
        self.search = SearchServices(settings, self.engine, self.hooks)
        self.search_registry = self.search.registry
        self.validator = validator or ResourceValidator()
        self.finder = finder or self.search.finder
        # 422 for dangling references, 409 for deleting what others refer to (FHIR_ENFORCE_REFERENTIAL_INTEGRITY)
        self.integrity = install_integrity(settings, self.hooks)
        self.uow = UnitOfWork(self.engine, self.hooks, self.validator, self.finder)
        self.binary = BinaryStorage(settings, self.hooks)  # Binary.data -> blob store, raw Binary REST
        self.operations = OperationRegistry()
        self.search.register_operations(self.operations)  # $reindex
        register_terminology(self)  # CodeSystem/ValueSet/ConceptMap operations + concept tables (terminology/)
        from fhir_server.subscriptions import install_matching  # here: it imports this module

        install_matching(self)  # Subscription matching in every write's transaction, whichever process writes
        self.bulk = register_bulk(self)  # Bulk Data $export / $import and their status URLs (fhir_server/jobs)
        register_everything(self)  # Patient/[id]/$everything (rest/operations/everything.py)
        register_validation(self)  # $validate, canonical URL table, FHIR_VALIDATE_PROFILES (fhir_server/validation)
        # claims: HCX / NHCX and FHIR-native payers (interfaces/claims), when FHIR_CLAIMS_GATEWAY_URL or
        # FHIR_CLAIMS_FHIR_CLIENT_ID is set: $submit operations
        self.claims: ClaimsGateway | None = None
        if settings.claims_gateway_url or settings.claims_fhir_client_id:
            from interfaces.claims.setup import register_claims

            register_claims(self)
        from fhir_server.workflows import install as install_workflows

        install_workflows(self)  # the hospital's rules, the areas FHIR_WORKFLOWS names (fhir_server/workflows)
        from fhir_server.storage.statistics import Analyzer

        Analyzer(self.engine, settings.analyze_after_rows).install(self.hooks)  # statistics for fresh data
        self.started = datetime.now(UTC)
        self._capability: dict[str, Any] | None = None
        self._capability_version = -1
        # metadata: (what it was made of, statement, its JSON) by (base URL, _summary, _elements)
        self._capability_json: dict[tuple[str, str | None, str | None], tuple[Any, dict[str, Any], bytes]] = {}
        self._profiles: tuple[Any, dict[str, list[str]]] = (None, {})  # (fingerprint, supportedProfile)
        # auth: CapabilityStatement.rest.security for a base URL (fhir_server.auth sets it; None: no SMART).
        self.security: Callable[[str], dict[str, Any]] | None = None
        # audit: an AuditEvent for every access (fhir_server.audit); None when FHIR_AUDIT_ENABLED=false.
        self.audit: Auditor | None = install_audit(self) if settings.audit_enabled else None

    def capability_statement(self, base_url: str = "", repo: Repository | None = None) -> dict[str, Any]:
        version = self.search_registry.version  # runtime SearchParameters change it: rebuild then
        if self._capability is None or self._capability_version != version:
            self._capability = capability_statement(self.settings.base_url or "", self.operations,
                                                    self.search_registry.capability_params, self.started)
            self._capability_version = version
        statement = self._capability
        url = self.settings.base_url or base_url
        if statement["implementation"]["url"] != url:  # unset FHIR_BASE_URL: the base this request came to
            statement = {**statement, "implementation": {**statement["implementation"], "url": url}}
        if repo is not None:  # validation: the installed profiles as supportedProfile
            statement = with_profiles(statement, supported_profiles(repo))
        if self.security is not None:  # auth
            return with_security(statement, self.security(self.settings.base_url or base_url))
        return statement

    def capability_response(self, req: FhirRequest, repo: Repository) -> FhirResponse:
        """``metadata``: built, shaped (``_summary``, ``_elements``) and serialised once, then served from that
        cache until what it is made of changes: runtime SearchParameters, the installed profiles (one indexed
        query per request), the base URL, the SMART security block."""
        url = self.settings.base_url or req.base_url
        summary, elements = check_summary(req.param("_summary")), req.param("_elements")
        fingerprint = profiles_fingerprint(repo)
        security = self.security(url) if self.security is not None else None
        made = (self.search_registry.version, fingerprint, security)
        cached = self._capability_json.get((url, summary, elements))
        if cached is None or cached[0] != made:
            if self._profiles[0] != fingerprint:
                self._profiles = (fingerprint, supported_profiles(repo))
            statement = with_profiles(self.capability_statement(url), self._profiles[1])
            if security is not None:
                statement = with_security(statement, security)
            wanted = [e.strip().split(".")[-1] for e in elements.split(",") if e.strip()] if elements else None
            statement = shape(statement, summary, wanted)
            if len(self._capability_json) >= 32:  # base URLs come from Host headers: bounded
                self._capability_json.clear()
            cached = self._capability_json[(url, summary, elements)] = (made, statement, orjson.dumps(statement))
        return FhirResponse(200, cached[1], json=cached[2])

    def route(self, req: FhirRequest, repo: Repository) -> FhirResponse:
        if req.access is not repo.access:  # auth: an interaction runs with the access of whoever asked for it
            raise AssertionError(f"{req.method} /{req.path} runs in a unit of work of another access policy")
        self.search.refresh(repo.conn)  # SearchParameters other processes stored (looked at once a second)
        with routing(req):  # write hooks see the interaction's headers and may add warnings to its answer
            if self.audit is not None:  # audit: each interaction (also each Bundle entry)
                return self.audit.route(req, repo, lambda: route(self, req, repo))
            return route(self, req, repo)

    def handle(self, req: FhirRequest) -> FhirResponse:
        token = REQUEST_BASE_URL.set(req.base_url or REQUEST_BASE_URL.get())  # a server's own PUT keeps the outer
        try:
            if self.audit is not None:  # audit: who asked, and what the request as a whole answered
                return self.audit.handle(req, self._handle)
            return self._handle(req)
        finally:
            REQUEST_BASE_URL.reset(token)

    def _handle(self, req: FhirRequest) -> FhirResponse:
        """One request in one unit of work; every error leaves as an OperationOutcome."""
        try:
            if req.method == "POST" and not req.path.strip("/"):
                return self._bundle(req)
            write = req.method not in READ_METHODS and not req.path.rstrip("/").endswith("_search") \
                and not self.operations.reads_only(req.path)  # POST ValueSet/$validate-code and the like
            return self.uow.run(lambda repo: self.route(req, repo), write=write, access=req.access)  # auth
        except FhirError as exc:
            return FhirResponse(exc.status, exc.outcome(), dict(exc.headers))
        except Exception:  # never a stack trace to the client; the log keeps it
            log.exception("unhandled error in %s /%s", req.method, req.path)
            return FhirResponse(500, operation_outcome([Issue(EXCEPTION, "Internal server error")]))

    def _bundle(self, req: FhirRequest) -> FhirResponse:
        body = req.json_body()
        btype, entries = bundle.parse_bundle(body, req.base_url)
        if btype == "transaction":
            return bundle.transaction(self, req, entries)
        if btype == "batch":
            return bundle.batch(self, req, entries)
        raise FhirError(400, INVALID, f"Unsupported Bundle.type {btype}")
