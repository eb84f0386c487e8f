"""Settings from the environment (prefix FHIR_), with safe embedded defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", env_file=".env", extra="ignore")

    environment: str = "local"  # local | test | production
    database_url: str = "sqlite:///data/fhir.sqlite3"
    # --- tenancy (fhir_server/tenancy; docs/tenancy.md): the hospital this process or command works for ---
    # "default" is the install's own data (the public schema / the FHIR_DATABASE_URL file); another code is a
    # tenant made with `fhir-server tenants create` (its own PostgreSQL schema / SQLite file).
    tenant: str = "default"
    # The platform administrator's bearer for /platform (fhir_server/api/platform.py); unset: /platform is closed.
    platform_token: SecretStr | None = None
    # Public FHIR base URL; unset: derived from each request (Host header) + "/fhir".
    base_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # Largest request body accepted for a FHIR resource or Bundle (Binary uploads stream and are capped apart).
    max_body_bytes: int = 64 * 1024 * 1024
    max_binary_bytes: int = 2 * 1024 * 1024 * 1024
    # The request line's URL and the header block; longer: 414 / 431 OperationOutcome (api/http_protocol.py).
    max_url_bytes: int = 16 * 1024
    max_header_bytes: int = 64 * 1024
    # Where Binary content lives: file://DIR (relative to the working directory, or file:///abs) or
    # s3://bucket[/prefix]?endpoint=http://host:9000&region=us-east-1 (any S3-compatible server).
    binary_store_url: str = "file://data/binary"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    default_page_size: int = 20
    max_page_size: int = 1000
    outbox_poll_seconds: float = 1.0
    # Run the in-process outbox dispatcher inside `serve` (the embedded default needs no worker).
    outbox_dispatcher: bool = True
    db_pool_size: int = 10
    # PostgreSQL: ANALYZE the searched tables (in a background thread) after this many committed resource
    # writes since the last one, so fresh data plans well before autovacuum comes (storage/statistics.py).
    # 0: never (autovacuum alone). `load` and `$import` analyse when they finish whatever this says.
    analyze_after_rows: int = 20000
    # --- what one search may cost (fhir_server/search/parser.py SearchLimits; over a limit: 400 naming it) ---
    search_max_and_params: int = 20  # criteria ANDed in one search (each parameter occurrence counts)
    search_max_or_values: int = 100  # comma-separated values in one parameter
    search_max_sort_keys: int = 5  # keys in _sort
    search_max_text_words: int = 50  # words in _text/_content, all values of one search together
    # A search's database work stops after this many seconds (503 OperationOutcome; 0: no limit), and when
    # its HTTP client disconnects (fhir_server/storage/interrupt.py).
    search_timeout_seconds: float = 5.0
    # PostgreSQL max_parallel_workers_per_gather for the server's connections (-1: the database's own).
    # API queries are short index walks: starting parallel workers cost more than they save (a 4 ms search
    # behind a 15 ms Gather start on 2 cores); 0 keeps each query on its one backend.
    db_parallel_workers_per_gather: int = 0
    # Full-text search (_text, _content) in Elasticsearch instead of the database (fhir_server/search/fulltext).
    elasticsearch_url: str | None = None
    elasticsearch_index: str = "fhir-resources"
    # HL7 v2 over MLLP (interfaces/mllp). `serve` starts the listener only when a port is set;
    # `fhir-server mllp` uses 2575 when unset.
    mllp_port: int | None = None
    mllp_host: str | None = None  # default: `host`
    mllp_max_message_bytes: int = 16 * 1024 * 1024
    mllp_idle_timeout_seconds: float = 600.0
    # Group commit (interfaces/mllp/group.py): messages waiting together share one transaction, at most
    # this many (1: every message alone), with this many groups applied at once per listener process.
    mllp_group_max: int = 16
    mllp_group_slots: int = 1
    mllp_tls_cert: str | None = None  # PEM certificate chain; with mllp_tls_key, the listener speaks TLS
    mllp_tls_key: str | None = None
    mllp_tls_client_ca: str | None = None  # PEM CA bundle: when set, senders must present a client cert
    # Assigning authority (CX-4 namespace or OID) -> Identifier.system, as JSON: {"HOSP": "https://..."}
    hl7_identifier_systems: dict[str, str] = {}
    hl7_default_timezone: str = "+00:00"  # for v2 timestamps without an offset
    # PID-3 (any CX) without an assigning authority: the authority per sending facility (MSH-4), as JSON
    # {"CITYHOSP": "https://..."} (a system URI, or an authority named in hl7_identifier_systems); a
    # facility not listed keeps such identifiers scoped to its sender (MSH-3|MSH-4), never shared.
    hl7_facility_authorities: dict[str, str] = {}
    # MSH-10 reused by the same sender with other content: "process" (as a new message, with a warning in
    # `hl7 stats`) or "reject" (AR naming MSH-10). Equal content apart from MSH-7 is always a duplicate.
    hl7_reused_control_id: Literal["process", "reject"] = "process"
    # v2.1/2.2 messages read with the 2.3 structures and accepted with a warning (false: AR naming MSH-12).
    hl7_legacy_versions: bool = True
    # --- requests the server makes for callers: rest-hooks, $import URLs (fhir_server/outbound.py) ---
    outbound_block_private: bool | None = None  # unset: block non-public addresses unless environment=local
    outbound_allowed_hosts: list[str] = []  # JSON list of host names exempt from that, e.g. ["lab-gw.hospital"]
    # --- SMART on FHIR (fhir_server.auth) ---
    # Bearer token required on the FHIR API (all but /metadata and .well-known); unset: true in production.
    auth_required: bool | None = None
    auth_access_token_seconds: int = 900  # at most 1800 (30 min)
    auth_refresh_token_days: int = 30
    auth_key_rotation_days: int = 30  # a new id_token/access-token signing key after this; the old stays in JWKS
    auth_smart_style_url: str | None = None
    # Requests per minute per client address (0: unlimited) on sign-in POSTs and on the token endpoint.
    auth_login_rate_per_minute: int = 30
    auth_token_rate_per_minute: int = 600
    # --- profile validation (fhir_server/validation) ---
    # Validate every write against the profiles in its meta.profile (and the base invariants): errors -> 422.
    validate_profiles: bool = False
    # With validate_profiles: a meta.profile this server does not have is an error (else a warning).
    validate_profiles_strict: bool = False
    # Referential integrity (fhir_server/rest/integrity.py), as HAPI enforces it by default: a local reference
    # to a resource that does not exist is refused (422), and so is deleting a resource others refer to (409,
    # unless DELETE ...?_cascade=delete by an administrator).
    enforce_referential_integrity: bool = True
    # An AuditEvent for every read, search, write, sign-in, token and refusal (fhir_server.audit).
    audit_enabled: bool = True
    # Reads' AuditEvents written by a background thread, in batches, off the request path (writes always keep
    # theirs in their own transaction). A hard kill loses the last ~0.1 s of queued read events; false: none.
    audit_background: bool = True
    # --- background jobs (fhir_server/jobs) ---
    # Celery broker (redis://host:6379/0, amqp://user:pass@host//); unset: jobs run inside `serve`.
    broker_url: str | None = None
    broker_queue: str = "fhir"  # celery queue the API sends to and workers consume (one per deployment)
    # A claimed outbox row is taken over once its dispatcher stops renewing it this long (it renews while it
    # works, however slow the receiver: short, so a crashed dispatcher's rows wait only seconds).
    outbox_lease_seconds: float = 10.0
    outbox_lanes: int = 8  # outbox rows delivered in parallel per process (one subscription's rows in order)
    worker_concurrency: int = 2  # threads per `fhir-server worker`
    job_poll_seconds: float = 1.0  # how often workers look for due outbox rows and stalled jobs
    job_lease_seconds: float = 60.0  # a job whose runner stops renewing this long is resumed by another
    bulk_expiry_seconds: int = 3600  # bulk data output files can be downloaded this long after completion
    bulk_file_resources: int = 100_000  # an NDJSON output file holds at most this many resources
    bulk_page_size: int = 2000  # rows read per query while exporting (memory stays flat)
    # --- operations (fhir_server/api/health.py, metrics.py; fhir_server/logs.py) ---
    metrics_token: SecretStr | None = None  # bearer a Prometheus scrape sends to /metrics (else an admin token)
    log_format: str = "text"  # text | json (one object per line, with the request id)

    # --- the hospital's own rules (fhir_server/workflows; docs/workflows.md) ---
    # Which workflow areas enforce their rules on every write, whichever app writes: a comma-separated list
    # (frontdesk, scheduling, clinic, notifications, pharmacy, laboratory, wards, billing) or "all". Unset: a
    # plain FHIR server (bulk loads of historic data, test fixtures) with none of the hospital's rules.
    workflows: str = ""
    # clinic: an unsigned clinical note (Composition, DocumentReference) can be edited this long after its date
    clinic_note_edit_hours: float = 24.0
    # notifications (FHIR_WORKFLOWS=notifications; docs/workflows/notifications.md): e-mail over SMTP, SMS over an
    # HTTP gateway, sent through the outbox. An unset host / URL: that channel is not used.
    notify_smtp_host: str | None = None
    notify_smtp_port: int = 587
    notify_smtp_security: Literal["none", "starttls", "tls"] = "starttls"  # tls: SMTPS (implicit TLS, port 465)
    notify_smtp_user: str | None = None
    notify_smtp_password: SecretStr | None = None
    notify_email_from: str = "hospital@localhost"
    notify_smtp_ca_file: str | None = None  # PEM of the CA of the SMTP server's certificate; unset: the system's
    notify_sms_url: str | None = None  # the gateway's send URL: POST with the body template below
    notify_sms_auth_header: SecretStr | None = None  # e.g. "Authorization: Bearer KEY" (name: value)
    notify_sms_content_type: str = "application/json"
    # string.Template; $to, $text, $id (the Communication id) are substituted JSON-escaped in a JSON type
    notify_sms_body_template: str = '{"to": "$to", "message": "$text", "reference": "$id"}'
    notify_timeout_seconds: float = 10.0  # one SMTP conversation / one gateway request
    notify_max_attempts: int = 8  # deliveries tried (exponential backoff) before the dead letter
    notify_reminder_hours: float = 24.0  # a booked appointment's reminder goes out this long before its start
    notify_reminder_check_seconds: float = 300.0  # how often the reminder check looks for appointments
    notify_language: str = "en"  # templates used when the patient prefers a language we have none for
    notify_timezone: str = "Asia/Kolkata"  # appointment times in messages are shown in this zone
    # frontdesk: the system of the MRN every new Patient gets (PT-YYYYMMDD-NNNN), the hospital's own URI, and the
    # time zone whose calendar day numbers it.
    mrn_system: str = "https://fhir-server.dev/sid/mrn"
    mrn_timezone: str = "Asia/Kolkata"

    # --- insurance claims over HCX / NHCX (interfaces/claims; docs/adapters.md). Unset gateway: no claims. ---
    claims_gateway_url: str | None = None  # protocol base, e.g. https://staging-hcx.swasth.app/api/v0.8
    claims_flavour: str = "hcx"  # hcx (Swasth HCX 0.9) | nhcx (NHA's NHCX: NRCeS 6.5.0, ABHA header)
    claims_participant_code: str | None = None  # our own code in the registry, e.g. hospital01@hcx
    claims_gateway_code: str | None = None  # the HCX's own registry code (it sends error callbacks as itself)
    claims_private_key: str | None = None  # PEM file (or PEM text) of our encryption key pair
    claims_registry_url: str | None = None  # participant registry base; unset: the gateway URL
    claims_token_url: str | None = None  # unset: {gateway}/participant/auth/token/generate (hcx)
    claims_username: str | None = None  # hcx: the participant user's e-mail; nhcx: the ABDM clientId
    claims_secret: SecretStr | None = None  # hcx: the user's secret; nhcx: the ABDM clientSecret
    # The gateway's signing certificate / public key (PEM file or text): when set, callbacks must carry the
    # gateway's RS256 bearer (iss = FHIR_CLAIMS_GATEWAY_CODE when that is set); unset: trust rests on the JWE.
    claims_gateway_cert: str | None = None
    claims_callback_path: str = "/hcx"  # our callbacks: {this}/coverageeligibility/on_check, ...
    claims_timestamp_range_hours: float = 24.0  # callbacks older than this are refused (ERR_INVALID_TIMESTAMP)
    claims_registry_ttl_seconds: float = 3600.0  # participant entries and certificates cached this long
    claims_max_attempts: int = 10  # outbox deliveries to the gateway before the dead letter
    # Organization.identifier.system carrying a payer's participant code (Claim.insurer -> Organization).
    claims_participant_system: str = "https://hcxprotocol.io/participant_code"
    # FHIR-native payers (an Organization whose Endpoint is hl7-fhir-rest): SMART Backend Services client
    # (private_key_jwt). The key (PEM file or text) is RSA (RS384) or EC P-384 (ES384); the payer holds our JWKS.
    claims_fhir_client_id: str | None = None  # unset: requests to FHIR payers carry no bearer token
    claims_fhir_private_key: str | None = None
    claims_fhir_key_id: str | None = None  # the JWK kid the payer registered; unset: the key's RFC 7638 thumbprint
    claims_fhir_scope: str = ("system/Claim.c system/ClaimResponse.r system/CoverageEligibilityRequest.c "
                              "system/CoverageEligibilityResponse.r system/Task.r")
    claims_poll_seconds: float = 30.0  # a queued answer is polled after this, then twice as long each time
    claims_poll_max: int = 20  # polls of a queued answer before the exchange is recorded as an error

    # --- scheduling (fhir_server/workflows/scheduling; docs/workflows/scheduling.md), FHIR_WORKFLOWS=scheduling ---
    scheduling_timezone: str = "Asia/Kolkata"  # the clinic's clock: PractitionerRole.availableTime is local time
    scheduling_clinic_hours: str = "08:00-20:00"  # no slot outside these hours, whatever a role's hours say
    scheduling_slot_minutes: int = 30  # a slot's length unless the role's HealthcareService sets slot-duration
    scheduling_daily_cap: int = 40  # appointments (and slots) per practitioner a day; a role's daily-cap overrides
    scheduling_horizon_days: int = 28  # how far ahead a write of a PractitionerRole (re)generates its slots
    scheduling_min_lead_minutes: int = 0  # a booking (or a reschedule) starts at least this long after now
    scheduling_max_reschedules: int = 2  # times a booked appointment may move (start, end or slot)
    scheduling_noshow_flag_after: int = 3  # consecutive no-shows that raise a Flag on the patient

    @model_validator(mode="after")
    def _production_needs_postgres(self) -> Settings:
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            raise ValueError("FHIR_ENVIRONMENT=production requires a PostgreSQL FHIR_DATABASE_URL")
        return self

    @property
    def outbound_private_blocked(self) -> bool:
        """Requests the server makes for callers (rest-hooks, $import URLs) avoid non-public addresses,
        except in local development (fhir_server/outbound.py)."""
        return self.outbound_block_private if self.outbound_block_private is not None else self.environment != "local"

    @model_validator(mode="after")
    def _auth_defaults(self) -> Settings:
        if self.auth_required is None:
            self.auth_required = self.environment == "production"
        if not 60 <= self.auth_access_token_seconds <= 1800:
            raise ValueError("FHIR_AUTH_ACCESS_TOKEN_SECONDS must be between 60 and 1800 (SMART: short-lived)")
        return self

    def sqlite_path(self) -> Path | None:
        prefix = "sqlite:///"
        if self.database_url.startswith(prefix):
            rest = self.database_url[len(prefix):]
            return None if rest in ("", ":memory:") else Path(rest)
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per broken setting, naming its variable and the rule (for the command line)."""
    lines = []
    for error in exc.errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if error.get("loc"):
            name = "FHIR_" + "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"{name}: {message} (got {error.get('input')!r})")
        else:
            lines.append(message)  # a rule across settings: its message names the variables
    return lines
