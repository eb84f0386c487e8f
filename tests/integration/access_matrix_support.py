"""The access matrix's cases, generated from the application itself (issue 12 point 4; no tests here).

Every HTTP route of ``create_app`` (the FHIR catch-all expanded into the FHIR interactions, the others as
they are: /auth, /admin, discovery, the websocket), every operation in ``FhirServer.operations`` at every
level it is registered for, and each FHIR one also inside a batch and a transaction Bundle. A route or an
operation added later joins the matrix without anyone listing it here. Placeholders in paths and bodies
(``{Observation}``: patient B's Observation id, ``{b}``: patient B's id) are filled at run time.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.routing import BaseRoute, Route, WebSocketRoute

# The resource types patient B has data of (what the tokens must not see), and their link to the patient.
DATA_TYPES = ("Patient", "Observation", "Condition", "Encounter")
PATIENT_PARAM = {"Observation": "subject", "Condition": "subject", "Encounter": "subject", "Patient": "_id"}
# Other types operations run on: B's Group (members), a Subscription on B's Observations, terminology.
# The hospital workflows' operations run on more types (no data of B's there: ids are "matrix-none").
OTHER_TYPES = ("Group", "Subscription", "CodeSystem", "ValueSet", "ConceptMap", "Appointment", "PractitionerRole",
               "Location", "Invoice", "Consent", "Account", "MedicationRequest", "ServiceRequest", "Measure",
               "Claim", "CoverageEligibilityRequest", "Communication")  # claims: $submit, $inquire
# Every FHIR interaction the router serves (restful-interaction codes); test_capability_... checks that the
# CapabilityStatement names no other, so a new interaction fails the matrix until it has cases here.
INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                "search-type", "history-system", "search-system", "transaction", "batch")
WRAPS = ("top", "batch", "transaction")
FHIR_CATCH_ALL = "/fhir/{path:path}"
# ABDM's endpoints (interfaces/abdm) join the matrix too: the server is built with ABDM configured, its
# gateway unreachable (a gateway call in needs the gateway's signed token; no user token is one).
ABDM_ENV = {"FHIR_ABDM_GATEWAY_URL": "http://127.0.0.1:9", "FHIR_ABDM_HIP_ID": "MATRIX-HIP",
            "FHIR_ABDM_HIU_ID": "MATRIX-HIU", "FHIR_ABDM_CLIENT_SECRET": "matrix"}


@contextlib.contextmanager
def abdm_configured() -> Iterator[None]:
    """ABDM's settings in the environment while an app is built (each server reads them once, at mount)."""
    saved = {k: os.environ.get(k) for k in ABDM_ENV}
    os.environ.update(ABDM_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Case:
    """One request; ``target`` is the type of B's data it aims at (None: none in particular)."""

    name: str
    method: str
    path: str  # relative to the FHIR base for FHIR cases, to the root for the others
    body: Any = None  # JSON (a resource or Parameters) or, for form posts, a dict
    headers: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    instance: bool = False  # aims at B's resource itself: the status must be a refusal (403)
    fhir: bool = True  # can go inside a Bundle
    write: bool = False  # changes data when permitted: run after every read
    form: bool = False
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _minimal(rtype: str) -> dict[str, Any]:
    """A valid new resource of ``rtype`` about patient B."""
    subject = {"reference": "Patient/{b}"}
    return {
        "Patient": {"resourceType": "Patient", "name": [{"family": "Matrixnew"}], "link": [
            {"other": subject, "type": "seealso"}]},
        "Observation": {"resourceType": "Observation", "status": "final", "code": {"text": "matrix"},
                        "subject": subject},
        "Condition": {"resourceType": "Condition", "code": {"text": "matrix"}, "subject": subject},
        "Encounter": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                      "subject": subject},
    }[rtype]


def interaction_cases() -> list[Case]:
    out: list[Case] = [
        Case("metadata", "GET", "metadata"),
        Case("history-system", "GET", "_history?_count=100"),
        Case("search-system", "GET", "?_type=" + ",".join(DATA_TYPES) + "&_count=100&_total=accurate"),
        Case("search-system-id", "GET", "?_type=Observation,Condition&_id={Observation},{Condition}"
                                        "&_total=accurate", target="Observation"),
        Case("search-system-post", "POST", "_search", {"_type": "Observation,Condition", "_id": "{Observation}"},
             target="Observation", form=True, fhir=False),
    ]
    for t in DATA_TYPES:
        link = f"{PATIENT_PARAM[t]}={'{b}' if t == 'Patient' else 'Patient/{b}'}"
        out += [
            Case(f"read {t}", "GET", f"{t}/{{{t}}}", target=t, instance=True),
            Case(f"vread {t}", "GET", f"{t}/{{{t}}}/_history/1", target=t, instance=True),
            Case(f"vread-missing {t}", "GET", f"{t}/{{{t}}}/_history/99", target=t, instance=True),
            Case(f"history-instance {t}", "GET", f"{t}/{{{t}}}/_history", target=t, instance=True),
            Case(f"history-type {t}", "GET", f"{t}/_history?_count=100", target=t),
            Case(f"search-type {t}", "GET", f"{t}?{link}&_total=accurate", target=t),
            Case(f"search-type-id {t}", "GET", f"{t}?_id={{{t}}}&_total=accurate", target=t),
            Case(f"search-type-count {t}", "GET", f"{t}?{link}&_summary=count", target=t),
            Case(f"search-type-marker {t}", "GET", f"{t}?_content={{marker:{t}}}&_total=accurate", target=t),
            Case(f"search-type-post {t}", "POST", f"{t}/_search", {"_id": f"{{{t}}}", "_total": "accurate"},
                 target=t, form=True, fhir=False),
            Case(f"search-type-revinclude {t}", "GET", f"Patient?_id={{b}}&_revinclude={t}:"
                                                       f"{'link' if t == 'Patient' else 'subject'}", target=t),
        ]
        if t != "Patient":
            out += [
                Case(f"search-compartment {t}", "GET", f"Patient/{{b}}/{t}?_total=accurate", target=t),
                Case(f"search-chain {t}", "GET", f"{t}?subject:Patient.family=Betamatrix&_total=accurate",
                     target=t),
                Case(f"search-has {t}", "GET", f"Patient?_has:{t}:subject:_id={{{t}}}&_total=accurate", target=t),
                Case(f"search-include {t}", "GET", f"{t}?_id={{{t}}}&_include={t}:subject", target=t),
            ]
        new = _minimal(t)
        out += [
            Case(f"create {t}", "POST", t, new, target=t, write=True),
            Case(f"create-conditional {t}", "POST", t, new, (("If-None-Exist", f"_id={{{t}}}"),), target=t,
                 write=True),
            Case(f"update {t}", "PUT", f"{t}/{{{t}}}", f"{{content:{t}}}", target=t, instance=True, write=True),
            Case(f"update-if-match {t}", "PUT", f"{t}/{{{t}}}", f"{{content:{t}}}", (("If-Match", 'W/"1"'),),
                 target=t, instance=True, write=True),
            Case(f"update-conditional {t}", "PUT", f"{t}?_id={{{t}}}", f"{{content:{t}}}", target=t, write=True),
            Case(f"patch {t}", "PATCH", f"{t}/{{{t}}}", [{"op": "test", "path": "/id", "value": f"{{{t}}}"}],
                 (("Content-Type", "application/json-patch+json"),), target=t, instance=True, write=True),
            Case(f"patch-conditional {t}", "PATCH", f"{t}?_id={{{t}}}",
                 [{"op": "test", "path": "/id", "value": f"{{{t}}}"}],
                 (("Content-Type", "application/json-patch+json"),), target=t, write=True),
            Case(f"delete-conditional {t}", "DELETE", f"{t}?_id={{{t}}}", target=t, write=True),
            Case(f"delete {t}", "DELETE", f"{t}/{{{t}}}", target=t, instance=True, write=True),
        ]
    return out


def operation_cases(app: FastAPI) -> list[Case]:
    """Each registered operation at each level it runs at: system, each type (our data types where it says
    every type), each instance (B's resource of that type)."""
    out: list[Case] = []
    for name, op in sorted(app.state.fhir.operations.operations.items()):
        method = "POST" if op.affects_state else "GET"
        body = {"resourceType": "Parameters", "parameter": []} if method == "POST" else None
        headers = (("Prefer", "respond-async"),)
        query = ""
        if name.endswith("-poll-status") or name == "bulk-file":
            query = "?_jobId={job}"  # the admin's export of everything: nobody else may see it
            if name == "bulk-file":
                query += "&_file=Observation.1"
        elif name == "export":
            query = "?_type=" + ",".join(DATA_TYPES)
        levels: list[tuple[str, str | None, bool]] = []  # (path prefix, target, instance)
        if op.system:
            levels.append(("", None, False))
        for t in sorted(op.types) if op.types is not None else DATA_TYPES:
            if t not in DATA_TYPES + OTHER_TYPES:
                continue
            levels.append((f"{t}/", t, False))
            if op.instance:
                levels.append((f"{t}/{{{t}}}/", t, True))
        for prefix, target, instance in levels:
            level = "instance" if instance else "type" if target else "system"
            out.append(Case(f"${name} {level} {target or ''}".strip(), method, f"{prefix}${name}{query}", body,
                            headers, target=target if target in DATA_TYPES else "Observation",
                            write=op.affects_state,
                            # administrative: changes the whole server (an explicit flag on the registry wins)
                            extra={"op": name, "admin": getattr(op, "admin", op.affects_state and op.system)}))
    return out


def _walk(routes: list[BaseRoute]) -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for r in routes:
        inner = getattr(r, "original_router", None)  # FastAPI's included routers
        out += _walk(list(inner.routes)) if inner is not None else [r]
    return out


def route_cases(app: FastAPI) -> list[Case]:
    """Every route other than the FHIR catch-all, each method, path parameters filled with B's ids."""
    out: list[Case] = []
    for r in _walk(list(app.routes)):
        if isinstance(r, WebSocketRoute):
            out.append(Case(f"websocket {r.path}", "WS", r.path, fhir=False))
            continue
        if not isinstance(r, Route) or r.path == FHIR_CATCH_ALL:
            continue
        path = re.sub(r"\{[^}]+\}", "1", r.path)  # typed path parameters (row ids) are numbers
        for method in sorted((r.methods or set()) - {"HEAD"}):
            body = {"patient": "{b}"} if method == "POST" else None  # /auth/launch and the like: for B
            out.append(Case(f"route {method} {r.path}", method, path, body, fhir=False, target="Patient",
                            form=r.path != "/auth/launch", write=method != "GET"))
    return out


@lru_cache(maxsize=1)
def claims_configured() -> dict[str, Any]:
    """Settings with claims on (HCX and FHIR-native payers), nothing reachable: the matrix sees their entry points."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from interfaces.claims import keys

    private_pem, _cert = keys.generate("matrix@hcx")
    smart = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"claims_gateway_url": "http://127.0.0.1:9", "claims_participant_code": "matrix@hcx",
            "claims_private_key": private_pem, "claims_fhir_client_id": "matrix", "claims_fhir_private_key": smart}


@lru_cache(maxsize=1)
def application() -> FastAPI:
    """The app as ``serve`` builds it, on a throwaway SQLite file, only to read its routes and registry."""
    from fhir_server.app import create_app
    from fhir_server.config import Settings
    from fhir_server.rest.server import FhirServer
    from fhir_server.storage.database import make_engine

    tmp = Path(tempfile.mkdtemp(prefix="matrix-"))
    settings = Settings(database_url=f"sqlite:///{tmp / 'routes.sqlite3'}", outbox_dispatcher=False,
                        audit_enabled=False, binary_store_url=f"file://{tmp / 'binary'}",
                        workflows="all",  # every hospital workflow's operations (fhir_server/workflows)
                        **claims_configured())  # claims: $submit, $inquire, Invoice/$claim, the HCX callbacks
    with abdm_configured():
        return create_app(settings, FhirServer(settings, make_engine(settings)))


def all_cases() -> list[Case]:
    app = application()
    cases = [*interaction_cases(), *operation_cases(app), *route_cases(app)]
    # Reads first, then writes, deletes last: a write that wrongly succeeds spoils as little as possible.
    return sorted(cases, key=lambda c: (c.write, c.method == "DELETE"))


def fill(value: Any, world: dict[str, str]) -> Any:
    """Placeholders -> run-time values; ``"{content:T}"`` alone becomes B's resource of type T itself."""
    if isinstance(value, str):
        whole = re.fullmatch(r"\{content:([A-Za-z]+)\}", value)
        if whole:
            return orjson.loads(world[f"content:{whole.group(1)}"])
        return re.sub(r"\{([A-Za-z:]+)\}", lambda m: world.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: fill(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, world) for v in value]
    return value


def bundle_entry(case: Case, world: dict[str, str]) -> dict[str, Any]:
    """The case as a Bundle entry (a JSON Patch travels as a Binary, as http.html#patch says)."""
    request: dict[str, Any] = {"method": case.method, "url": fill(case.path, world)}
    for name, value in case.headers:
        if name == "If-None-Exist":
            request["ifNoneExist"] = fill(value, world)
        elif name == "If-Match":
            request["ifMatch"] = value
    entry: dict[str, Any] = {"request": request}
    body = fill(case.body, world)
    if case.method == "PATCH":
        entry["resource"] = {"resourceType": "Binary", "contentType": "application/json-patch+json",
                             "data": base64.b64encode(orjson.dumps(body)).decode()}
    elif isinstance(body, dict) and body.get("resourceType"):
        entry["resource"] = body
    return entry


def case_id(case: Case, wrap: str, token: str) -> str:
    return f"{token}|{wrap}|{case.name}"
