"""SMART on FHIR end to end over real HTTP, on SQLite and PostgreSQL: discovery, backend services
(private_key_jwt RS384/ES384, client_secret_basic), authorization code + PKCE, refresh rotation and reuse
detection, introspection, revocation, EHR launch, and rejected tokens."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import TENANT_BACKENDS, Backend
from tests.integration.test_auth_support import (
    PASSWORD,
    Smart,
    assertion,
    authorize,
    backend_token_request,
    code_from,
    exchange,
    new_key,
    pkce,
    smart_server,
)

# Also in a non-default tenant: its own schema, through /fhir/{tenant} (issue 13).
pytestmark = pytest.mark.parametrize("backend", TENANT_BACKENDS, indirect=True)

REDIRECT = "http://127.0.0.1:9/callback"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@pytest.fixture(scope="module")
def smart(backend: Backend) -> Iterator[Smart]:
    yield from smart_server(backend)


def test_discovery_and_anonymous_access(smart: Smart) -> None:
    conf = smart.http.get(f"{smart.base}/.well-known/smart-configuration").json()
    assert conf["issuer"] == smart.base
    assert conf["token_endpoint"] == f"{smart.root}/auth/token"
    assert conf["authorization_endpoint"] == f"{smart.root}/auth/authorize"
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert {"private_key_jwt", "client_secret_basic"} <= set(conf["token_endpoint_auth_methods_supported"])
    assert {"launch-ehr", "launch-standalone", "client-public", "permission-v2", "sso-openid-connect",
            "context-ehr-patient", "permission-offline"} <= set(conf["capabilities"])
    assert {"RS384", "ES384"} <= set(conf["token_endpoint_auth_signing_alg_values_supported"])
    # /metadata needs no token and carries the oauth-uris extension with absolute URLs.
    cs = smart.fhir("GET", "metadata")
    assert cs.status_code == 200
    security = cs.json()["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in next(x for x in security["extension"] if x["url"] == OAUTH_URIS)
            ["extension"]}
    assert uris["token"] == conf["token_endpoint"] and uris["authorize"] == conf["authorization_endpoint"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    # Anything else without a token: 401 OperationOutcome with a Bearer challenge.
    r = smart.fhir("GET", "Patient")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"
    jwks = smart.http.get(f"{smart.root}/auth/jwks").json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])  # public halves only


def test_backend_services_rs384_and_es384(smart: Smart) -> None:
    for alg in ("RS384", "ES384"):
        key = new_key(alg)
        client = smart.client(["client_credentials"], "system/Patient.rs system/Observation.rs",
                              jwks=KeySet([key]).as_dict(private=False))
        assert "client_secret" not in client and client["token_endpoint_auth_method"] == "private_key_jwt"
        signed = assertion(key, alg, client["client_id"], smart.token_url)
        r = backend_token_request(smart, signed, "system/Patient.rs system/Observation.rs system/Claim.rs")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 1800
        assert set(body["scope"].split()) == {"system/Patient.rs", "system/Observation.rs"}  # Claim not allowed
        token = body["access_token"]
        assert smart.fhir("GET", "Patient", token).status_code == 200
        denied = smart.fhir("POST", "Patient", token, content=orjson.dumps({"resourceType": "Patient"}),
                            headers={"Content-Type": "application/fhir+json"})
        assert denied.status_code == 403
        assert denied.json()["issue"][0]["code"] == "forbidden"
        # The same assertion again is a replay.
        again = backend_token_request(smart, signed, "system/Patient.rs")
        assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def test_backend_assertion_rules(smart: Smart) -> None:
    key = new_key("RS384")
    client = smart.client(["client_credentials"], "system/*.rs", jwks=KeySet([key]).as_dict(private=False))
    cid = client["client_id"]
    too_long = backend_token_request(smart, assertion(key, "RS384", cid, smart.token_url, exp_in=3600),
                                     "system/*.rs")
    assert too_long.json()["error"] == "invalid_client"
    wrong_aud = backend_token_request(smart, assertion(key, "RS384", cid, "https://elsewhere/token"), "system/*.rs")
    assert wrong_aud.json()["error"] == "invalid_client"
    other_key = new_key("RS384")
    forged = backend_token_request(smart, assertion(other_key, "RS384", cid, smart.token_url), "system/*.rs")
    assert forged.json()["error"] == "invalid_client"
    expired = backend_token_request(smart, assertion(key, "RS384", cid, smart.token_url, exp_in=-120), "system/*.rs")
    assert expired.json()["error"] == "invalid_client"
    ok = backend_token_request(smart, assertion(key, "RS384", cid, smart.token_url), "system/*.rs")
    assert ok.status_code == 200, ok.text


def test_client_secret_basic(smart: Smart) -> None:
    client = smart.client(["client_credentials"], "system/Patient.read")
    r = smart.http.post(smart.token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.read"},
                        auth=(client["client_id"], client["client_secret"]))
    assert r.status_code == 200 and r.json()["scope"] == "system/Patient.read"
    bad = smart.http.post(smart.token_url, data={"grant_type": "client_credentials"},
                          auth=(client["client_id"], "wrong"))
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"


def _jwt_claims(token: str) -> dict:
    part = token.split(".")[1]
    return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_code_flow_with_pkce_openid_and_patient_pick(smart: Smart) -> None:
    pid = smart.as_admin("POST", "Patient", content=orjson.dumps({"resourceType": "Patient"}),
                         headers={"Content-Type": "application/fhir+json"}).json()["id"]
    user = smart.user("doctor", "Practitioner/doc-1")
    scope = "openid fhirUser launch/patient patient/*.rs offline_access"
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    # A public client must send PKCE.
    no_pkce = smart.http.get(f"{smart.root}/auth/authorize", params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT, "scope": scope,
        "state": "x", "aud": smart.base}, follow_redirects=False)
    assert no_pkce.status_code == 302 and "error=invalid_request" in no_pkce.headers["location"]
    # An unregistered redirect URI is never redirected to.
    page = smart.http.get(f"{smart.root}/auth/authorize", params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT + "/x",
        "scope": scope, "state": "x", "aud": smart.base, "code_challenge": challenge,
        "code_challenge_method": "S256"})
    assert page.status_code == 400 and "text/html" in page.headers["content-type"]
    picker = authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge)
    assert picker.status_code == 200 and "Choose the patient" in picker.text, picker.text  # signed in: now pick one
    unknown = authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge,
                        form={"patient": "no-such-patient"})
    assert unknown.status_code == 400 and "not a patient you may see" in unknown.text
    r = authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge, form={"patient": pid},
                  extra={"nonce": "n-1"})
    code = code_from(r, REDIRECT)
    wrong = exchange(smart, client["client_id"], code, REDIRECT, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # The code is single use: burnt by the failed attempt too.
    assert exchange(smart, client["client_id"], code, REDIRECT, verifier).json()["error"] == "invalid_grant"

    r = authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge, form={"patient": pid},
                  extra={"nonce": "n-2"})
    code = code_from(r, REDIRECT)
    token = exchange(smart, client["client_id"], code, REDIRECT, verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["patient"] == pid and body["need_patient_banner"] is True
    assert body["fhirUser"] == "Practitioner/doc-1" and body["refresh_token"]
    assert token.headers["cache-control"] == "no-store"
    keys = KeySet.import_key_set(smart.http.get(f"{smart.root}/auth/jwks").json())
    id_token = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert id_token["aud"] == client["client_id"] and id_token["nonce"] == "n-2"
    assert id_token["fhirUser"] == f"{smart.base}/Practitioner/doc-1" and id_token["iss"] == smart.base
    access = _jwt_claims(body["access_token"])
    assert access["exp"] - access["iat"] <= 1800
    assert smart.fhir("GET", f"Patient/{pid}", body["access_token"]).status_code == 200
    # A reused code revokes what it issued.
    assert exchange(smart, client["client_id"], code, REDIRECT, verifier).json()["error"] == "invalid_grant"
    assert smart.fhir("GET", f"Patient/{pid}", body["access_token"]).status_code == 401


def test_deny_and_confidential_code_flow(smart: Smart) -> None:
    user = smart.user("nurse")
    client = smart.client(["authorization_code"], "openid user/*.rs", redirect_uris=[REDIRECT])
    denied = authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, decision="deny")
    assert denied.status_code == 302 and "error=access_denied" in denied.headers["location"]
    code = code_from(authorize(smart, client["client_id"], REDIRECT, "user/*.rs openid", user), REDIRECT)
    no_auth = exchange(smart, client["client_id"], code, REDIRECT, None)
    assert no_auth.status_code in (400, 401)
    code = code_from(authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user), REDIRECT)
    ok = exchange(smart, client["client_id"], code, REDIRECT, None, auth=(client["client_id"], client["client_secret"]))
    assert ok.status_code == 200 and ok.json()["scope"] == "user/*.rs" and "refresh_token" not in ok.json()


def _refreshable(smart: Smart) -> tuple[dict, dict]:
    user = smart.user("doctor")
    scope = "user/*.rs offline_access"
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge), REDIRECT)
    return client, exchange(smart, client["client_id"], code, REDIRECT, verifier).json()


def test_refresh_rotation_and_reuse_detection(smart: Smart) -> None:
    client, first = _refreshable(smart)

    def refresh(token: str, scope: str | None = None) -> dict:
        data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client["client_id"]}
        if scope:
            data["scope"] = scope
        return smart.http.post(smart.token_url, data=data).json()

    assert refresh(first["refresh_token"], "user/*.cruds offline_access")["error"] == "invalid_scope"  # escalation
    second = refresh(first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"]
    assert smart.fhir("GET", "Patient", second["access_token"]).status_code == 200
    # Presenting the exchanged token again: reuse, the whole family dies (tokens in flight too).
    assert refresh(first["refresh_token"])["error"] == "invalid_grant"
    assert refresh(second["refresh_token"])["error"] == "invalid_grant"
    assert smart.fhir("GET", "Patient", second["access_token"]).status_code == 401
    assert smart.fhir("GET", "Patient", first["access_token"]).status_code == 401


def test_public_client_refreshes_without_naming_itself(smart: Smart) -> None:
    """The SMART JavaScript client's default: grant_type=refresh_token with no client_id."""
    _client, first = _refreshable(smart)
    refreshed = smart.http.post(smart.token_url, data={"grant_type": "refresh_token",
                                                       "refresh_token": first["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    assert smart.fhir("GET", "Patient", refreshed.json()["access_token"]).status_code == 200
    # Rotation still holds: the exchanged token presented again (still without client_id) kills the family.
    again = smart.http.post(smart.token_url, data={"grant_type": "refresh_token",
                                                   "refresh_token": first["refresh_token"]})
    assert again.json()["error"] == "invalid_grant"


def test_confidential_client_refresh_still_needs_its_credentials(smart: Smart) -> None:
    user = smart.user("doctor")
    scope = "user/*.rs offline_access"
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT])
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user), REDIRECT)
    tokens = exchange(smart, client["client_id"], code, REDIRECT, None,
                      auth=(client["client_id"], client["client_secret"])).json()
    bare = smart.http.post(smart.token_url, data={"grant_type": "refresh_token",
                                                  "refresh_token": tokens["refresh_token"]})
    assert bare.status_code == 401 and bare.json()["error"] == "invalid_client"
    named = smart.http.post(smart.token_url, data={"grant_type": "refresh_token", "client_id": client["client_id"],
                                                   "refresh_token": tokens["refresh_token"]})
    assert named.status_code == 401  # naming it is not authenticating it
    ok = smart.http.post(smart.token_url,
                         data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                         auth=(client["client_id"], client["client_secret"]))
    assert ok.status_code == 200, ok.text


def test_introspection_and_revocation(smart: Smart) -> None:
    resource_server = smart.client(["client_credentials"], "system/Patient.rs", resource_server=True)
    rs_auth = (resource_server["client_id"], resource_server["client_secret"])
    client, tokens = _refreshable(smart)
    # A confidential client that is not a registered resource server learns nothing of others' tokens.
    other = smart.client(["client_credentials"], "system/Patient.rs")
    for token in (tokens["access_token"], tokens["refresh_token"]):
        r = smart.http.post(f"{smart.root}/auth/introspect", data={"token": token},
                            auth=(other["client_id"], other["client_secret"]))
        assert r.status_code == 200 and r.json() == {"active": False}

    def introspect(token: str) -> dict:
        r = smart.http.post(f"{smart.root}/auth/introspect", data={"token": token}, auth=rs_auth)
        assert r.status_code == 200
        return r.json()

    info = introspect(tokens["access_token"])
    assert info["active"] is True and info["client_id"] == client["client_id"] and "user/*.rs" in info["scope"]
    assert introspect(tokens["refresh_token"])["active"] is True
    assert introspect("not-a-token") == {"active": False}
    unauthenticated = smart.http.post(f"{smart.root}/auth/introspect", data={"token": tokens["access_token"]})
    assert unauthenticated.status_code in (400, 401)
    # RFC 7009: the client revokes its access token; then the refresh token (and its family).
    r = smart.http.post(f"{smart.root}/auth/revoke", data={"token": tokens["access_token"],
                                                           "client_id": client["client_id"]})
    assert r.status_code == 200
    assert introspect(tokens["access_token"]) == {"active": False}
    assert smart.fhir("GET", "Patient", tokens["access_token"]).status_code == 401
    smart.http.post(f"{smart.root}/auth/revoke", data={"token": tokens["refresh_token"],
                                                       "client_id": client["client_id"]})
    assert introspect(tokens["refresh_token"]) == {"active": False}


def test_ehr_launch(smart: Smart) -> None:
    pid = smart.as_admin("POST", "Patient", content=orjson.dumps({"resourceType": "Patient"}),
                         headers={"Content-Type": "application/fhir+json"}).json()["id"]
    encounter = {"resourceType": "Encounter", "status": "in-progress", "subject": {"reference": f"Patient/{pid}"},
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}
    eid = smart.as_admin("POST", "Encounter", content=orjson.dumps(encounter),
                         headers={"Content-Type": "application/fhir+json"}).json()["id"]
    ehr = smart.system_token("launch system/*.rs")  # a backend with the launch permission
    assert smart.http.post(f"{smart.root}/auth/launch", json={"patient": pid}).status_code == 401
    launch = smart.http.post(f"{smart.root}/auth/launch", json={"patient": pid, "encounter": eid},
                             headers={"Authorization": f"Bearer {ehr}"}).json()["launch"]
    user = smart.user("doctor")
    scope = "launch patient/*.rs"
    client = smart.client(["authorization_code"], scope, redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    bad = smart.http.get(f"{smart.root}/auth/authorize", params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT, "scope": scope,
        "state": "s", "aud": smart.base, "launch": "nope", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    assert bad.status_code == 302 and "error=invalid_request" in bad.headers["location"]
    code = code_from(authorize(smart, client["client_id"], REDIRECT, scope, user, challenge=challenge,
                               extra={"launch": launch}), REDIRECT)
    body = exchange(smart, client["client_id"], code, REDIRECT, verifier).json()
    assert body["patient"] == pid and body["encounter"] == eid and body["need_patient_banner"] is False
    assert smart.fhir("GET", f"Patient/{pid}", body["access_token"]).status_code == 200


def test_rejected_tokens(smart: Smart) -> None:
    token = smart.system_token("system/*.rs")
    header, payload, signature = token.split(".")
    claims = _jwt_claims(token)
    claims["scope"] = "system/*.cruds"
    forged_payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    for bad in (f"{header}.{forged_payload}.{signature}", f"{none_header}.{payload}.", "garbage", token[:-4] + "AAAA"):
        r = smart.fhir("GET", "Patient", bad)
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert smart.fhir("GET", "Patient", headers={"Authorization": "Basic abc"}).status_code == 401
    assert smart.fhir("GET", "Patient", token).status_code == 200
    # Signed by us but expired, or for another audience, or an id_token: all rejected.
    now = int(time.time())
    base_claims = {"iss": smart.base, "aud": smart.base, "sub": "x", "scope": "system/*.rs", "jti": "j1",
                   "iat": now - 3600}
    for claims in ({**base_claims, "exp": now - 60}, {**base_claims, "aud": "https://other/fhir", "exp": now + 60},
                   {**base_claims, "aud": "some-client-id", "exp": now + 60}):
        r = smart.fhir("GET", "Patient", smart.auth.keys.sign(claims))
        assert r.status_code == 401, claims


def test_login_does_not_reveal_usernames_and_locks_out(smart: Smart) -> None:
    user = smart.user("doctor")
    client = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    _, challenge = pkce()
    unknown = authorize(smart, client["client_id"], REDIRECT, "user/*.rs", "no-such-user", challenge=challenge)
    wrong = authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, password="Wrong-Password-1",
                      challenge=challenge)
    assert unknown.status_code == wrong.status_code == 401

    def message(html: str) -> str:
        return html.split('role="alert"')[1].split("</p>")[0]
    assert message(unknown.text) == message(wrong.text)
    for _ in range(4):
        authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, password="Wrong-Password-1",
                  challenge=challenge)
    locked = authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, password=PASSWORD, challenge=challenge)
    assert locked.status_code == 401  # right password, but five failures locked the account


def test_csrf_is_required(smart: Smart) -> None:
    user = smart.user("doctor")
    client = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    _, challenge = pkce()
    form = {"response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT,
            "scope": "user/*.rs", "state": "s", "aud": smart.base, "code_challenge": challenge,
            "code_challenge_method": "S256", "username": user, "password": PASSWORD, "decision": "allow",
            "csrf_token": "forged"}
    smart.http.cookies.clear()
    r = smart.http.post(f"{smart.root}/auth/authorize", data=form)
    assert r.status_code == 400 and "location" not in r.headers


def test_key_rotation_keeps_tokens_in_flight_valid(smart: Smart) -> None:
    before = smart.system_token("system/*.rs")
    old_kid = orjson.loads(base64.urlsafe_b64decode(before.split(".")[0] + "=="))["kid"]
    smart.auth.keys.rotate()
    after = smart.system_token("system/*.rs")
    new_kid = orjson.loads(base64.urlsafe_b64decode(after.split(".")[0] + "=="))["kid"]
    assert new_kid != old_kid
    kids = {k["kid"] for k in smart.http.get(f"{smart.root}/auth/jwks").json()["keys"]}
    assert {old_kid, new_kid} <= kids
    assert smart.fhir("GET", "Patient", before).status_code == 200
    assert smart.fhir("GET", "Patient", after).status_code == 200


def test_admin_registers_clients_over_http(smart: Smart) -> None:
    def admin_token(role: str) -> str:
        user = smart.user(role)
        app = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
        verifier, challenge = pkce()
        code = code_from(authorize(smart, app["client_id"], REDIRECT, "user/*.rs", user, challenge=challenge),
                         REDIRECT)
        return str(exchange(smart, app["client_id"], code, REDIRECT, verifier).json()["access_token"])

    meta = {"client_name": "Insurer pull", "grant_types": ["client_credentials"], "scope": "system/Claim.rs"}
    url = f"{smart.root}/auth/clients"
    assert smart.http.post(url, json=meta).status_code == 401
    doctor = admin_token("doctor")
    assert smart.http.post(url, json=meta, headers={"Authorization": f"Bearer {doctor}"}).status_code == 403
    admin = {"Authorization": f"Bearer {admin_token('admin')}"}
    created = smart.http.post(url, json=meta, headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    r = smart.http.post(smart.token_url, data={"grant_type": "client_credentials"},
                        auth=(body["client_id"], body["client_secret"]))
    assert r.status_code == 200 and r.json()["scope"] == "system/Claim.rs"
    bad = smart.http.post(url, json={"client_name": "x", "grant_types": ["password"], "scope": "a"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client_metadata"


def test_authorize_requires_this_servers_aud(smart: Smart) -> None:
    client = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    _, challenge = pkce()
    r = smart.http.get(f"{smart.root}/auth/authorize", params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT, "scope": "user/*.rs",
        "state": "s1", "aud": "https://other.example.org/fhir", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith(REDIRECT + "?") and "error=invalid_request" in location and "state=s1" in location
    unknown = smart.http.get(f"{smart.root}/auth/authorize", params={
        "response_type": "code", "client_id": "nobody", "redirect_uri": REDIRECT, "scope": "user/*.rs",
        "aud": smart.base})
    assert unknown.status_code == 400 and "location" not in unknown.headers


def test_plain_http_on_a_lan_address_works_and_tokens_are_bound_to_the_host(smart: Smart) -> None:
    client = smart.client(["client_credentials"], "system/*.rs")
    lan = {"Host": "192.168.1.5:8080"}
    r = smart.http.post(smart.token_url, data={"grant_type": "client_credentials"}, headers=lan,
                        auth=(client["client_id"], client["client_secret"]))
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert _jwt_claims(token)["iss"] == "http://192.168.1.5:8080" + httpx.URL(smart.base).path  # (tenant's too)
    assert smart.fhir("GET", "Patient", token, headers=lan).status_code == 200
    assert smart.fhir("GET", "Patient", token).status_code == 401  # issued for another base URL
    app = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    _, challenge = pkce()
    page = smart.http.get(f"{smart.root}/auth/authorize", params={
        "response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT, "scope": "user/*.rs",
        "aud": smart.base, "code_challenge": challenge, "code_challenge_method": "S256"})
    action = httpx.URL(smart.root).path.rstrip("/") + "/auth/authorize"  # /t/{tenant}/auth/authorize in a tenant
    assert f'<form method="post" action="{action}">' in page.text  # credentials go back where they came from


def test_concurrent_exchanges_of_one_code_issue_one_token(smart: Smart) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    user = smart.user("doctor")
    client = smart.client(["authorization_code"], "user/*.rs", redirect_uris=[REDIRECT], public=True)
    verifier, challenge = pkce()
    code = code_from(authorize(smart, client["client_id"], REDIRECT, "user/*.rs", user, challenge=challenge), REDIRECT)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "client_id": client["client_id"], "code_verifier": verifier}

    def attempt(_: int) -> int:
        with httpx.Client(timeout=60) as http:
            return http.post(smart.token_url, data=data).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(attempt, range(10)))
    assert statuses == [200] + [400] * 9


def test_concurrent_use_of_one_refresh_token_is_reuse(smart: Smart) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    client, tokens = _refreshable(smart)
    data = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client["client_id"]}

    def attempt(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as http:
            return http.post(smart.token_url, data=data)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(attempt, range(6)))
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1 and sorted(r.status_code for r in responses) == [200] + [400] * 5
    # The losers presented an exchanged token: the family, including the winner's new tokens, is revoked.
    again = smart.http.post(smart.token_url, data={"grant_type": "refresh_token", "client_id": client["client_id"],
                                                   "refresh_token": winners[0].json()["refresh_token"]})
    assert again.json()["error"] == "invalid_grant"
    assert smart.fhir("GET", "Patient", winners[0].json()["access_token"]).status_code == 401
