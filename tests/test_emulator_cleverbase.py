"""The Cleverbase emulator is strict: each refusal of PROVIDERS.md 2.8, over raw HTTP."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from provider_support import emulator_fixtures

from s3mount.sandbox.cleverbase import CleverbaseEmulator, CleverbaseSettings
from s3mount.sandbox.emubase import admin_call

REDIRECT = "http://127.0.0.1:1/callback"


started, emu, info = emulator_fixtures(CleverbaseEmulator, CleverbaseSettings)


def authorize(info, **params) -> requests.Response:
    q = {"response_type": "code", "client_id": info["client_id"], "redirect_uri": REDIRECT,
         "scope": "openid com.cleverbase.storage", "state": "st", **params}
    q = {k: v for k, v in q.items() if v is not None}
    return requests.get(f"{info['issuer']}/oauth2/authorize?{urlencode(q)}",
                        allow_redirects=False, timeout=10)


def redirect_params(r: requests.Response) -> dict[str, str]:
    assert r.status_code == 302, r.text
    loc = r.headers["Location"]
    assert loc.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}


def code_for(info, **params) -> str:
    return redirect_params(authorize(info, **params))["code"]


def token(info, basic: bool = True, secret: str | None = None, **form) -> requests.Response:
    secret = info["client_secret"] if secret is None else secret
    body = {"grant_type": "authorization_code", "redirect_uri": REDIRECT, **form}
    headers = {}
    if basic:
        raw = f"{info['client_id']}:{secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    else:
        body.update(client_id=info["client_id"], client_secret=secret)
    return requests.post(f"{info['issuer']}/oauth2/token", data=body, headers=headers, timeout=10)


def credentials(info, access_token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    return requests.post(f"{info['api']}/v1/credentials", headers=headers, timeout=10)


def test_discovery_document_and_switch(emu, info):
    doc = requests.get(f"{info['issuer']}/.well-known/openid-configuration", timeout=10).json()
    assert doc["issuer"] == info["issuer"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"client_secret_basic",
                                                                 "client_secret_post"}
    emu.settings.discovery = False
    assert requests.get(f"{info['issuer']}/.well-known/openid-configuration",
                        timeout=10).status_code == 404


@pytest.mark.parametrize("params, problem", [
    ({"state": None}, "state"),
    ({"scope": "com.cleverbase.storage"}, "openid"),
    ({"response_type": "token"}, "response_type"),
    ({"code_challenge": "x", "code_challenge_method": "plain"}, "S256"),
])
def test_authorize_refusals_redirect_with_invalid_request(emu, info, params, problem):
    got = redirect_params(authorize(info, **params))
    assert got["error"] == "invalid_request" and problem in got["error_description"]
    assert "code" not in got


def test_authorize_unknown_client_is_not_redirected(emu, info):
    r = authorize(info, client_id="nobody")
    assert r.status_code == 400 and "Location" not in r.headers


def test_authorize_access_denied_fault(emu, info):
    emu.settings.authorize_fault = "access_denied"
    got = redirect_params(authorize(info))
    assert got == {"error": "access_denied", "error_description": "authentication challenge "
                   "expired", "state": "st"}


def test_both_client_auth_methods_and_wrong_secret(emu, info):
    assert token(info, code=code_for(info)).status_code == 200
    assert token(info, basic=False, code=code_for(info)).status_code == 200
    for basic in (True, False):
        r = token(info, basic=basic, secret="wrong", code=code_for(info))
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_code_is_single_use_and_expires(emu, info):
    code = code_for(info)
    assert token(info, code=code).status_code == 200
    r = token(info, code=code)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    late = code_for(info)
    emu.sandbox.clock.advance(61)
    assert token(info, code=late).json()["error"] == "invalid_grant"


def test_redirect_uri_must_match_exactly(emu, info):
    r = token(info, code=code_for(info), redirect_uri=REDIRECT + "/")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_pkce_is_verified(emu, info):
    verifier = generate_token(64)
    challenge = create_s256_code_challenge(verifier)
    ok = code_for(info, code_challenge=challenge, code_challenge_method="S256")
    assert token(info, code=ok, code_verifier=verifier).status_code == 200
    for wrong in ({"code_verifier": generate_token(64)}, {}):
        c = code_for(info, code_challenge=challenge, code_challenge_method="S256")
        assert token(info, code=c, **wrong).json()["error"] == "invalid_grant"


def test_grant_types(emu, info):
    r = token(info, grant_type="client_credentials")
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_request", "error_description":
                        "Invalid parameter grant_type"}
    got = token(info, code=code_for(info)).json()
    assert "refresh_token" not in got  # off by default
    emu.settings.refresh_tokens = True
    got = token(info, code=code_for(info)).json()
    r = token(info, grant_type="refresh_token", refresh_token=got["refresh_token"])
    assert r.status_code == 200 and r.json()["refresh_token"] != got["refresh_token"]
    again = token(info, grant_type="refresh_token", refresh_token=got["refresh_token"])
    assert again.json()["error"] == "invalid_grant"  # rotated: the old one is spent
    emu.settings.refresh_tokens = False
    r = token(info, grant_type="refresh_token", refresh_token=r.json()["refresh_token"])
    assert r.json()["error"] == "invalid_request"


def test_access_token_claims_and_lifetime(emu, info):
    from joserfc import jwt

    emu.settings.access_token_lifetime = 120
    got = token(info, code=code_for(info)).json()
    assert got["expires_in"] == 120 and got["token_type"] == "Bearer"
    claims = jwt.decode(got["access_token"], emu._key, algorithms=["HS256"]).claims
    assert set(claims) == {"iss", "sub", "client_id", "scope", "iat", "exp"}
    assert claims["exp"] - claims["iat"] == 120 and claims["client_id"] == info["client_id"]


def problem(r: requests.Response, status: int) -> dict:
    assert r.status_code == status
    assert r.headers["Content-Type"].startswith("application/problem+json")
    body = r.json()
    assert set(body) == {"type", "title", "status", "detail", "instance"}
    assert body["status"] == status and body["instance"] == "/v1/credentials"
    return body


def test_credentials_problems(emu, info):
    now = int(emu.now())
    good = {"iss": info["issuer"], "sub": "s", "client_id": "c",
            "scope": "openid com.cleverbase.storage", "iat": now, "exp": now + 60}
    assert "absent" in problem(credentials(info, None), 401)["detail"]
    assert credentials(info, None).headers["WWW-Authenticate"].startswith("Bearer")
    problem(credentials(info, "not-a-jwt"), 401)
    expired = emu.mint_access_token({**good, "exp": now - 1})
    assert problem(credentials(info, expired), 401)["detail"].startswith("Jwt expired at ")
    no_sub = emu.mint_access_token({k: v for k, v in good.items() if k != "sub"})
    problem(credentials(info, no_sub), 400)
    no_scope = emu.mint_access_token({**good, "scope": "openid"})
    r = credentials(info, no_scope)
    problem(r, 403)
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    ok = credentials(info, emu.mint_access_token(good)).json()
    assert ok["bucket"] == "cb-" + hashlib.sha256(b"c:s").hexdigest()[:16]
    assert set(ok["credentials"]) == {"accessKeyId", "secretAccessKey", "sessionToken",
                                      "expiration"}


def test_down_and_admin_hooks_over_http(emu, info):
    admin_call(info["admin_url"], info["admin_token"], "down")
    assert authorize(info).status_code == 503
    assert credentials(info, "x").status_code == 503
    admin_call(info["admin_url"], info["admin_token"], "up")
    assert authorize(info).status_code == 302
    r = requests.post(f"{info['admin_url']}/_admin/down", timeout=10)
    assert r.status_code == 403  # no admin token, no hook
    client = admin_call(info["admin_url"], info["admin_token"], "add_client",
                        {"redirect_uris": [REDIRECT]})
    assert redirect_params(authorize(info, client_id=client["client_id"]))["code"]
    assert authorize(info, client_id=client["client_id"],
                     redirect_uri="http://127.0.0.1:2/cb").status_code == 400
    admin_call(info["admin_url"], info["admin_token"], "fault",
               {"path": "/oauth2/authorize", "status": 500, "count": 2})
    assert [authorize(info).status_code for _ in range(3)] == [500, 500, 302]
    users = admin_call(info["admin_url"], info["admin_token"], "add_user", {"name": "carol"})
    assert "carol" in users["users"]
    with pytest.raises(requests.HTTPError):
        admin_call(info["admin_url"], info["admin_token"], "configure", {"nonsense": 1})
