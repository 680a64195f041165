"""The Clever Cloud emulator is strict about OAuth1: each refusal of PROVIDERS.md 3.10, raw HTTP."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
from botocore.exceptions import ClientError
from oauthlib.oauth1 import Client
from provider_support import emulator_fixtures, s3_client

from s3mount.sandbox.clevercloud import CleverCloudEmulator, CleverCloudSettings
from s3mount.store.base import KeySet

CALLBACK = "http://127.0.0.1:1/callback"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


started, emu, info = emulator_fixtures(CleverCloudEmulator, CleverCloudSettings)


def signed(client: Client, method: str, url: str, body: str | None = None) -> requests.Response:
    headers = dict(FORM) if body is not None else {}
    uri, headers, body = client.sign(url, method, body, headers)
    return requests.request(method, uri, headers=headers, data=body, timeout=10)


def access_token(info, **client_kw) -> tuple[str, str]:
    """Run the whole dance by hand; returns (token, secret)."""
    ck, cs = info["consumer_key"], info["consumer_secret"]
    c = Client(ck, client_secret=cs, callback_uri=CALLBACK, signature_method="HMAC-SHA512",
               signature_type="BODY")
    r = signed(c, "POST", f"{info['api']}/v2/oauth/request_token", "")
    assert r.status_code == 200, r.text
    rt = {k: v[0] for k, v in parse_qs(r.text).items()}
    assert rt["oauth_callback_confirmed"] == "true"
    r = requests.get(f"{info['api']}/v2/oauth/authorize", params={"oauth_token": rt[
        "oauth_token"]}, allow_redirects=False, timeout=10)
    assert r.status_code == 303
    back = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
    assert back["oauth_token"] == rt["oauth_token"] and back["user"].startswith("user_")
    c = Client(ck, client_secret=cs, resource_owner_key=rt["oauth_token"],
               resource_owner_secret=rt["oauth_token_secret"], verifier=back["oauth_verifier"],
               signature_method="HMAC-SHA512", signature_type="QUERY")
    r = signed(c, "POST", f"{info['api']}/v2/oauth/access_token_query")
    assert r.status_code == 200, r.text
    at = {k: v[0] for k, v in parse_qs(r.text).items()}
    assert at["expiration_date"].endswith("Z")
    return at["oauth_token"], at["oauth_token_secret"]


def resource(info, token, secret, **kw) -> Client:
    return Client(info["consumer_key"], client_secret=info["consumer_secret"],
                  resource_owner_key=token, resource_owner_secret=secret, **kw)


def assert_401(r: requests.Response, message: str) -> None:
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["id"] == 401 and body["type"] == "error" and message in body["message"]


@pytest.mark.parametrize("kw", [
    {"signature_method": "HMAC-SHA512"},
    {"signature_method": "HMAC-SHA1", "signature_type": "QUERY"},
    {"signature_method": "PLAINTEXT"},
])
def test_signature_methods_and_places(emu, info, kw):
    token, secret = access_token(info)
    r = signed(resource(info, token, secret, **kw), "GET", f"{info['api']}/v2/self")
    assert r.status_code == 200 and r.json()["name"] == "alice"


def test_three_parameter_plaintext(emu, info):
    """The official JS client's form: no method, timestamp, nonce or version."""
    token, secret = access_token(info)
    sig = quote(f"{quote(info['consumer_secret'], safe='')}&{quote(secret, safe='')}", safe="")
    header = (f'OAuth oauth_consumer_key="{info["consumer_key"]}", oauth_token="{token}", '
              f'oauth_signature="{sig}"')
    r = requests.get(f"{info['api']}/v2/self", headers={"Authorization": header}, timeout=10)
    assert r.status_code == 200
    bad = header.replace(sig, sig[:-3] + "x")
    assert_401(requests.get(f"{info['api']}/v2/self", headers={"Authorization": bad},
                            timeout=10), "Invalid signature")


def test_tampered_signature_is_refused(emu, info):
    token, secret = access_token(info)
    uri, headers, _ = resource(info, token, secret, signature_method="HMAC-SHA512").sign(
        f"{info['api']}/v2/self")
    sig_at = headers["Authorization"].index('oauth_signature="') + len('oauth_signature="')
    flipped = "A" if headers["Authorization"][sig_at] != "A" else "B"
    headers["Authorization"] = headers["Authorization"][:sig_at] + flipped + \
        headers["Authorization"][sig_at + 1:]
    assert_401(requests.get(uri, headers=headers, timeout=10), "Invalid signature")


def test_signature_covers_the_path(emu, info):
    token, secret = access_token(info)
    _, headers, _ = resource(info, token, secret).sign(f"{info['api']}/v2/self")
    assert_401(requests.get(f"{info['api']}/v2/summary", headers=headers, timeout=10),
               "Invalid signature")


def test_nonce_replay_and_stale_timestamp(emu, info):
    token, secret = access_token(info)
    uri, headers, _ = resource(info, token, secret).sign(f"{info['api']}/v2/self")
    assert requests.get(uri, headers=headers, timeout=10).status_code == 200
    assert_401(requests.get(uri, headers=headers, timeout=10), "Nonce already used")
    old = resource(info, token, secret, timestamp=str(int(time.time()) - 301))
    assert_401(signed(old, "GET", f"{info['api']}/v2/self"), "Expired timestamp")


def test_params_in_two_places_are_refused(emu, info):
    token, secret = access_token(info)
    uri, headers, _ = resource(info, token, secret, signature_type="QUERY").sign(
        f"{info['api']}/v2/self")
    _, h2, _ = resource(info, token, secret).sign(f"{info['api']}/v2/self")
    assert requests.get(uri, headers=h2, timeout=10).status_code == 400


def test_unknown_consumer_and_wrong_callback_domain(emu, info):
    c = Client("nobody", client_secret="x", callback_uri=CALLBACK, signature_type="BODY")
    assert_401(signed(c, "POST", f"{info['api']}/v2/oauth/request_token", ""),
               "Unknown consumer")
    c = Client(info["consumer_key"], client_secret=info["consumer_secret"],
               callback_uri="https://evil.example/cb", signature_type="BODY")
    assert_401(signed(c, "POST", f"{info['api']}/v2/oauth/request_token", ""), "base URL")


def test_verifier_and_request_token_are_single_use(emu, info):
    ck, cs = info["consumer_key"], info["consumer_secret"]
    c = Client(ck, client_secret=cs, callback_uri=CALLBACK, signature_type="BODY")
    rt = {k: v[0] for k, v in parse_qs(
        signed(c, "POST", f"{info['api']}/v2/oauth/request_token", "").text).items()}
    requests.get(f"{info['api']}/v2/oauth/authorize", params={"oauth_token": rt["oauth_token"]},
                 allow_redirects=False, timeout=10)
    bad = Client(ck, client_secret=cs, resource_owner_key=rt["oauth_token"],
                 resource_owner_secret=rt["oauth_token_secret"], verifier="guess",
                 signature_type="BODY")
    assert_401(signed(bad, "POST", f"{info['api']}/v2/oauth/access_token", ""),
               "Invalid verifier")
    # the failed attempt consumed the request token
    assert_401(signed(bad, "POST", f"{info['api']}/v2/oauth/access_token", ""), "Invalid")


def test_expired_and_revoked_tokens(emu, info):
    emu.settings.token_lifetime = 30
    token, secret = access_token(info)
    emu.sandbox.clock.advance(31)
    assert_401(signed(resource(info, token, secret), "GET", f"{info['api']}/v2/self"),
               "Token expired")
    emu.settings.token_lifetime = 3600
    token, secret = access_token(info)
    r = signed(resource(info, token, secret), "DELETE", f"{info['api']}/v2/self/tokens/{token}")
    assert r.status_code == 204
    assert_401(signed(resource(info, token, secret), "GET", f"{info['api']}/v2/self"),
               "Token revoked")


def test_addon_routes_and_v4_renew(emu, info):
    token, secret = access_token(info)
    c = resource(info, token, secret)
    me = signed(c, "GET", f"{info['api']}/v2/self").json()
    mine = signed(c, "GET", f"{info['api']}/v2/self/addons").json()
    assert [a["name"] for a in mine] == ["alice-cellar"]
    assert mine[0]["provider"]["id"] == "cellar-addon"
    env = {e["name"]: e["value"] for e in signed(
        c, "GET", f"{info['api']}/v2/self/addons/{mine[0]['id']}/env").json()}
    assert set(env) == {"CELLAR_ADDON_HOST", "CELLAR_ADDON_KEY_ID", "CELLAR_ADDON_KEY_SECRET"}
    bob = info["users"]["bob"]["addons"][0]
    assert signed(c, "GET", f"{info['api']}/v2/self/addons/{bob['id']}").status_code == 404
    org_id = next(iter(info["organisations"]))
    orgs = signed(c, "GET", f"{info['api']}/v2/organisations").json()
    assert [o["id"] for o in orgs] == [org_id]
    assert len(signed(c, "GET", f"{info['api']}/v2/organisations/{org_id}/addons").json()) == 1
    v4 = f"{info['api']}/v4/cellar/organisations/{me['id']}/cellar/{mine[0]['realId']}/credentials"
    before = signed(c, "GET", v4).json()
    assert before["keyId"] == env["CELLAR_ADDON_KEY_ID"]
    assert signed(c, "POST", v4 + "/renew").status_code == 204
    after = signed(c, "GET", v4).json()
    assert after["keyId"] != before["keyId"]
    old = KeySet(before["keyId"], before["keySecret"], endpoint_url=before["host"])
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        s3_client(old).list_objects_v2(Bucket=info["users"]["alice"]["addons"][0]["buckets"][0])
    current = signed(c, "GET", f"{info['api']}/v2/self/tokens/current").json()
    assert current["token"] == token and current["expirationDate"]
