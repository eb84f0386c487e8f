"""The generated access matrix (issue 12 point 4): every route, interaction and registered operation (read
from the app's routers and ``FhirServer.operations``, see access_matrix_support.py), at the top level, in a
batch and in a transaction, with four tokens that may not see patient B's data, against B's data. Nothing of
it may come back: not in a body (resources, OperationOutcome text), not in a count, not in a job's output
(exports are polled to completion and their files read), not in a notification ($events, the websocket).
Refusals of B's own resources are 403. Real HTTP, real tokens, both databases.

Known failures that other work in issue 12 closes are ``xfail(strict=True)`` in KNOWN with the point that
closes them: when it lands, the strict xfail turns red and the line is removed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from tests.conftest import Backend, wait_until
from tests.integration.access_matrix_support import (
    DATA_TYPES,
    INTERACTIONS,
    OTHER_TYPES,
    WRAPS,
    Case,
    abdm_configured,
    all_cases,
    application,
    bundle_entry,
    case_id,
    claims_configured,
    fill,
)
from tests.integration.bulk_support import kick_off, poll
from tests.integration.test_auth_access import _user_token
from tests.integration.test_auth_support import Smart, smart_server
from tests.integration.test_console_support import sign_in

JSON = {"Content-Type": "application/fhir+json"}
# What each token must never see of patient B: every type for the patient user and the narrow launch,
# clinical types for the receptionist (its role reads Patient and Encounter), all but Patient for a backend
# granted system/Patient.r.
TOKENS: dict[str, tuple[str, ...]] = {
    "patient": DATA_TYPES,
    "narrow": DATA_TYPES,
    "receptionist": ("Observation", "Condition"),
    "backend": ("Observation", "Condition", "Encounter"),
}
# Routes that only an administrator (or an EHR-side user who may read the patient) may use.
ADMIN_ROUTES = ("/admin/", "/platform/")  # operators and the platform administrator only
# The console (fhir_server/console) takes no bearer token, only its own session: every route but the sign-in's
# own two doors refuses each token (401). An interface analyst's session is refused the admins' pages and,
# without the form's CSRF token, every POST (403).
CONSOLE, CONSOLE_DOORS, CONSOLE_ADMIN = "/console", ("/console/sign-in", "/console/callback"), \
    ("/console/people", "/console/resources")
# ABDM: gateway calls in need the gateway's token, a push its transaction's secret, the HIU's staff endpoints
# an administrator.
ABDM_ROUTES = ("/abdm/",)
LAUNCH_REFUSED = ("patient", "narrow", "backend")
COUNTED = ("search-type ", "search-type-id", "search-type-count", "search-type-post", "search-system-id",
           "search-system-post", "search-compartment", "search-chain", "search-has", "history-instance")

# (case id pattern, reason): failures another part of issue 12 closes (remove the line when it lands).
# Known gaps: (case id pattern, the issue point that closes it) -> strict xfail. None today.
KNOWN: list[tuple[str, str]] = []


def _params() -> Iterator[Any]:
    for case in all_cases():
        for wrap in WRAPS if case.fhir else ("top",):
            for token in TOKENS:
                cid = case_id(case, wrap, token)
                reasons = [r for pattern, r in KNOWN if fnmatch.fnmatchcase(cid, pattern)]
                marks = [pytest.mark.xfail(strict=True, reason=reasons[0])] if reasons else []
                yield pytest.param(case, wrap, token, id=cid, marks=marks)


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    backend.truncate()
    # the hospital's operations, the claims entry points and ABDM's endpoints join the matrix too
    servers = smart_server(backend, workflows="all", **claims_configured())
    with abdm_configured():
        smart = next(servers)
    yield smart
    next(servers, None)  # the server stops (the code after its yield)


def _create(smart: Smart, admin: str, resource: dict[str, Any]) -> dict[str, Any]:
    r = smart.fhir("POST", resource["resourceType"], admin, content=orjson.dumps(resource), headers=JSON)
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def world(smart: Smart) -> dict[str, Any]:
    return build_world(smart)


def build_world(smart: Smart) -> dict[str, Any]:
    """Patients A and B with an Observation, a Condition and an Encounter each (B's marked with strings that
    appear nowhere else), B's Group and a Subscription on B's Observations, an admin export of everything,
    and the four tokens."""
    admin = smart.system_token("system/*.cruds")
    w: dict[str, Any] = {"admin": admin}
    secrets: dict[str, list[str]] = {t: [] for t in DATA_TYPES}
    for who in ("a", "b"):
        mark = f"{who}mark{uuid.uuid4().hex[:10]}"
        family = "Betamatrix" if who == "b" else "Alphamatrix"
        p = _create(smart, admin, {"resourceType": "Patient", "name": [{"family": family, "given": [mark + "p"]}],
                                   "active": True})
        ref = {"reference": f"Patient/{p['id']}"}
        made = {"Patient": p}
        made["Encounter"] = _create(smart, admin, {"resourceType": "Encounter", "status": "finished",
                                                   "class": {"code": "AMB"}, "subject": ref,
                                                   "serviceType": {"text": mark + "e"},
                                                   "reasonCode": [{"text": mark + "reason"}]})
        encounter = {"reference": f"Encounter/{made['Encounter']['id']}"}
        made["Observation"] = _create(smart, admin, {"resourceType": "Observation", "status": "final",
                                                     "code": {"text": mark + "o"}, "subject": ref,
                                                     "encounter": encounter})
        made["Condition"] = _create(smart, admin, {"resourceType": "Condition", "code": {"text": mark + "c"},
                                                   "subject": ref})
        if who == "b":
            for t, resource in made.items():
                w[t] = resource["id"]
                w[f"marker:{t}"] = mark + t[0].lower()
                content = {k: v for k, v in resource.items() if k != "meta"}
                w[f"content:{t}"] = orjson.dumps(content).decode()
                secrets[t] = [resource["id"], mark + t[0].lower()]
            w["masked"] = {"receptionist": [mark + "reason"]}  # Encounter.reasonCode: the role's mask
            # A second version of each: a leaked "current version is 2" would tell, whatever ran before.
            for t, resource in made.items():
                again = {k: v for k, v in resource.items() if k != "meta"}
                r = smart.fhir("PUT", f"{t}/{again['id']}", admin, content=orjson.dumps(again), headers=JSON)
                assert r.status_code == 200, r.text
        else:
            w["a"] = p["id"]
    w["b"] = w["Patient"]
    w["Group"] = _create(smart, admin, {"resourceType": "Group", "type": "person", "actual": True,
                                        "member": [{"entity": {"reference": f"Patient/{w['b']}"}}]})["id"]
    w["Subscription"] = _create(smart, admin, {
        "resourceType": "Subscription", "status": "requested", "reason": "matrix",
        "criteria": f"Observation?subject=Patient/{w['b']}",
        "channel": {"type": "websocket", "payload": "application/fhir+json"}})["id"]
    for t in OTHER_TYPES:
        w.setdefault(t, "matrix-none")
    w["secrets"] = secrets
    status = kick_off(smart.http, f"{smart.base}/$export?_type=" + ",".join(DATA_TYPES), admin)
    assert poll(smart.http, status, admin).status_code == 200
    w["job"] = status.split("_jobId=")[1]
    a = w["a"]
    w["tokens"] = {
        "patient": _user_token(smart, "patient", "launch/patient patient/*.cruds",
                               fhir_user=f"Patient/{a}")["access_token"],
        "narrow": _user_token(smart, "doctor", "launch/patient patient/Observation.rs", patient=a)["access_token"],
        "receptionist": _user_token(smart, "receptionist", "user/*.cruds")["access_token"],
        "backend": smart.system_token("system/Patient.r"),
    }
    return w


# --- sending a case ---------------------------------------------------------------------------------------------

def _send(smart: Smart, case: Case, wrap: str, token: str, world: dict[str, Any]) -> tuple[httpx.Response, str]:
    """The response, and the request's text (what the caller itself said may come back). ``token`` "": none."""
    headers = {"Accept": "application/fhir+json", **({"Authorization": f"Bearer {token}"} if token else {})}
    if wrap != "top":
        entry = bundle_entry(case, world)
        bundle = {"resourceType": "Bundle", "type": wrap, "entry": [entry]}
        extra = {k: v for k, v in case.headers if k == "Prefer"}
        content = orjson.dumps(bundle)
        r = smart.http.post(smart.base, content=content, headers={**headers, **JSON, **extra})
        return r, content.decode()
    path = fill(case.path, world)
    url = smart.root + path if path.startswith("/") else f"{smart.base}/{path}"
    headers.update({k: fill(v, world) for k, v in case.headers})
    body = fill(case.body, world)
    if body is None:
        r = smart.http.request(case.method, url, headers=headers)
        return r, url
    if case.form:
        r = smart.http.request(case.method, url, data=body, headers=headers)
    else:
        headers.setdefault("Content-Type", "application/fhir+json" if isinstance(body, dict) else "application/json")
        r = smart.http.request(case.method, url, content=orjson.dumps(body), headers=headers)
    return r, url + orjson.dumps(body).decode()


def _batch_entry(smart: Smart, case: Case, token_name: str, world: dict[str, Any]) -> tuple[int, str, str]:
    """A batch's entries are independent, so each token sends every FHIR case in one batch (once per module,
    cached in ``world``) and each case reads its own entry: (entry status, entry text, what was sent)."""
    cached = world.setdefault("batches", {})
    cases = [c for c in all_cases() if c.fhir]
    if token_name not in cached:
        alone: set[int] = set()  # entries the batch refuses as a whole (a 400 naming them): sent alone
        while True:
            indexes = [i for i in range(len(cases)) if i not in alone]
            entries = [bundle_entry(cases[i], world) for i in indexes]
            bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
            r = smart.http.post(smart.base, content=orjson.dumps(bundle), headers={
                "Authorization": f"Bearer {world['tokens'][token_name]}", "Accept": "application/fhir+json",
                "Prefer": "respond-async", **JSON})
            named = re.search(r"Bundle\.entry\[(\d+)\]", r.text) if r.status_code != 200 else None
            if named is None:
                break
            alone.add(indexes[int(named.group(1))])
        assert r.status_code == 200, r.text[:500]
        cached[token_name] = dict(zip(indexes, zip(entries, r.json()["entry"], strict=True), strict=True))
    i = cases.index(case)
    if i not in cached[token_name]:
        r, said = _send(smart, case, "batch", world["tokens"][token_name], world)
        return _status(r, "batch"), r.text, said
    entry, answer = cached[token_name][i]
    status = int(str(answer.get("response", {}).get("status", "0")).split()[0])
    return status, orjson.dumps(answer).decode(), orjson.dumps(entry).decode()


def _websocket(smart: Smart, token: str, world: dict[str, Any]) -> tuple[int, str]:
    """Bind to B's Subscription (by bearer token and by a binding token, if one is handed out), have the
    admin write a new Observation of B's, and return what the socket said."""
    url = smart.base.replace("http://", "ws://") + "/subscriptions/ws"
    sub = world["Subscription"]
    heard: list[str] = []
    r = smart.fhir("POST", f"Subscription/{sub}/$get-ws-binding-token", token)
    binding = r.json().get("parameter", []) if r.status_code == 200 else []
    commands = [f"bind {sub}"] + [f"bind-with-token {p.get('valueString')}" for p in binding
                                  if p.get("name") == "token"]
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            for command in commands:
                ws.send(command)
                heard.append(str(ws.recv(timeout=10)))
            if any(h.startswith("bound") for h in heard):
                obs = orjson.loads(world["content:Observation"])
                _create(smart, world["admin"], {k: v for k, v in obs.items() if k != "id"})

                def told() -> bool:
                    try:
                        heard.append(str(ws.recv(timeout=0.2)))
                    except TimeoutError:
                        return False
                    return "ping" in heard[-1] or "{" in heard[-1]
                with contextlib.suppress(AssertionError):  # nothing told: nothing leaked
                    wait_until(told, 5, "a notification")
    except (ConnectionClosed, WebSocketException):
        pass
    return 200, "\n".join(heard) + r.text


# --- checking a response ----------------------------------------------------------------------------------------

def _totals(value: Any) -> Iterator[int]:
    if isinstance(value, dict):
        if value.get("resourceType") == "Bundle" and isinstance(value.get("total"), int):
            yield value["total"]
        for item in value.values():
            yield from _totals(item)
    elif isinstance(value, list):
        for item in value:
            yield from _totals(item)


def _status(r: httpx.Response, wrap: str) -> int:
    """The case's own status: the entry's in a batch, the Bundle's or the entry's in a transaction."""
    if wrap == "top" or r.status_code != 200:
        return r.status_code
    entries = r.json().get("entry") or [{}]
    return int(str(entries[0].get("response", {}).get("status", "0")).split()[0])


def _job_outputs(smart: Smart, text: str, token: str, world: dict[str, Any]) -> str:
    """Every bulk job the response started, polled to the end with the caller's token, files read."""
    out: list[str] = []
    urls = set(re.findall(r"https?://[^\"\s\\]+\$[a-z]+-poll-status\?_jobId=[A-Za-z0-9-]+", text))
    # Inside a Bundle the entry carries no Content-Location, only the informational outcome naming the job.
    urls |= {f"{smart.base}/${kind.lower()}-poll-status?_jobId={job}"
             for kind, job in re.findall(r"([A-Z][a-z]+) job ([A-Za-z0-9-]+) accepted", text)}
    for url in urls:
        if world["job"] in url:
            continue  # the admin's own job, asked about directly
        resp = poll(smart.http, url, token)
        out.append(resp.text)
        # The job is its starter's: another token neither polls nor downloads it.
        other = world["tokens"]["backend" if token != world["tokens"]["backend"] else "patient"]
        stranger = smart.http.get(url, headers={"Authorization": f"Bearer {other}"})
        assert stranger.status_code in (401, 403, 404), f"another token polled the job: {stranger.status_code}"
        if resp.status_code == 200:
            for item in resp.json().get("output", []) + resp.json().get("error", []):
                out.append(smart.http.get(item["url"], headers={"Authorization": f"Bearer {token}"}).text)
    return "\n".join(out)


@pytest.mark.parametrize(("case", "wrap", "token_name"), list(_params()))
def test_matrix(smart: Smart, world: dict[str, Any], case: Case, wrap: str, token_name: str) -> None:
    token = world["tokens"][token_name]
    hidden = TOKENS[token_name]
    if case.method == "WS":
        status, text = _websocket(smart, token, world)
        said = ""
    else:
        if wrap == "batch":
            status, text, said = _batch_entry(smart, case, token_name, world)
            location = ""
        else:
            r, said = _send(smart, case, wrap, token, world)
            status, text, location = _status(r, wrap), r.text, r.headers.get("Content-Location", "")
            assert r.status_code < 500, (r.status_code, text[:500])
        assert status < 500, (status, text[:500])
        if status == 202 or "-poll-status?_jobId=" in text or " accepted" in text:
            text += _job_outputs(smart, text + location, token, world)
    secret = [s for t in hidden for s in world["secrets"][t]] + world["masked"].get(token_name, [])
    leaked = [s for s in secret if s in text and s not in said]
    assert not leaked, f"B's data came back ({', '.join(leaked)}): {text[:800]}"
    forbidden_target = case.target in hidden
    if forbidden_target and case.name.startswith(COUNTED) and case.method != "WS":
        body = orjson.loads(text.split("\n", 1)[0]) if text.startswith("{") else {}
        assert all(t == 0 for t in _totals(body)), f"B's data counted: {text[:500]}"
    if forbidden_target and case.instance and "op" not in case.extra:
        assert status == 403, f"B's {case.target} answered {status}, not 403: {text[:500]}"
    if forbidden_target and case.write and "op" not in case.extra and case.fhir:
        assert not 200 <= status < 300, f"a write on B's {case.target} was allowed ({status})"
    if token_name == "backend" and case.target == "Patient" and "op" not in case.extra and case.fhir:
        # SMART v2 letters (point 8): system/Patient.r reads and vreads B's Patient but searches no Patients
        if case.name in ("read Patient", "vread Patient"):
            assert status == 200, f"system/Patient.r could not {case.name}: {status} {text[:300]}"
        elif case.name.startswith(("search-type", "history-type")):
            assert status == 403, f"system/Patient.r could {case.name}: {status}"
    if case.extra.get("admin"):  # refused; inside a Bundle an entry may be refused before routing (400/404)
        allowed = (401, 403) if wrap == "top" else (400, 401, 403, 404)
        assert status in allowed, f"the administrative {case.name} answered {status} to a {token_name} token"
    if case.path.startswith(ADMIN_ROUTES + ABDM_ROUTES) or \
            (case.path == "/auth/launch" and token_name in LAUNCH_REFUSED):
        assert status in (401, 403), f"{case.path} answered {status} to a {token_name} token"
    if case.path.startswith(CONSOLE) and case.path not in CONSOLE_DOORS:
        assert status == 401, f"{case.path} answered {status} to a {token_name} token"
        if token_name == "patient":  # once per route: an interface analyst's console session
            analyst = _analyst(smart, world)
            r = analyst.request(case.method, smart.root + fill(case.path, world),
                                data=fill(case.body, world) if case.method == "POST" else None)
            if case.method == "POST" or case.path.startswith(CONSOLE_ADMIN):
                assert r.status_code == 403, f"{case.path} answered {r.status_code} to an interface analyst"
            # B's content, and the ids of B's records: the analyst reads Subscriptions, whose criteria name
            # patient B (Observation?subject=Patient/B), and nothing else.
            hidden_here = [world[f"marker:{t}"] for t in DATA_TYPES] + [world[t] for t in DATA_TYPES if t != "Patient"]
            leaked = [s for s in hidden_here if s in r.text]
            assert not leaked, f"B's data came back to the console ({', '.join(leaked)})"


def _analyst(smart: Smart, world: dict[str, Any]) -> httpx.Client:
    """An interface analyst signed in to the console (once per module)."""
    if "analyst" not in world:
        browser, done = sign_in(smart, smart.user("interface-analyst"))
        assert done.status_code == 303, done.text
        world["analyst"] = browser
    client: httpx.Client = world["analyst"]
    return client


def test_the_matrix_covers_every_interaction_the_server_declares() -> None:
    """A new interaction in the CapabilityStatement must get cases here before the matrix passes."""
    fhir = application().state.fhir
    statement = fhir.capability_statement("")
    declared = {i["code"] for rest in statement["rest"] for i in rest.get("interaction", [])}
    declared |= {i["code"] for rest in statement["rest"] for res in rest.get("resource", [])
                 for i in res.get("interaction", [])}
    assert declared <= set(INTERACTIONS), sorted(declared - set(INTERACTIONS))
    operations = {c.extra["op"] for c in all_cases() if "op" in c.extra}
    assert operations == set(fhir.operations.operations)


def test_b_data_survived_the_matrix(smart: Smart, world: dict[str, Any]) -> None:
    """Every write above was refused or changed nothing: B's resources are as they were made."""
    for t in DATA_TYPES:
        r = smart.fhir("GET", f"{t}/{world[t]}", world["admin"])
        assert r.status_code == 200, (t, r.text)
        assert world[f"marker:{t}"] in r.text
