"""Clever Cloud provider end to end: OAuth1 login through the emulator, Cellar keys on the sandbox."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError
from provider_support import (
    assert_isolated,
    assert_keys_work,
    assert_no_secrets,
    assert_one_line_error,
    debug_caplog,
    run_cli,
    s3_client,
    shared_sandbox,
    write_config,
    xdg_home,
)

from s3mount.config import TokenStore, load_profile
from s3mount.credentials.base import ProviderError
from s3mount.credentials.browser import http_browser
from s3mount.credentials.build import provider_from_profile
from s3mount.credentials.clevercloud import CleverCloudProvider
from s3mount.credentials.oauth1 import OAuth1Auth
from s3mount.credentials.refresher import Refresher
from s3mount.sandbox.clevercloud import CleverCloudEmulator, CleverCloudSettings

xdg = pytest.fixture(xdg_home)
debug_logs = pytest.fixture(debug_caplog)


@pytest.fixture(scope="module")
def sandbox():
    return shared_sandbox()


@pytest.fixture(scope="module")
def emu_info(sandbox):
    emu = CleverCloudEmulator(sandbox)
    info = emu.start()
    yield emu, info
    emu.stop()


@pytest.fixture
def emu(emu_info):
    emu, _ = emu_info
    emu.settings = CleverCloudSettings()
    emu.down = False
    return emu


@pytest.fixture
def info(emu_info):
    return emu_info[1]


def profile(info: dict, addon: str = "alice-cellar", **extra) -> dict:
    return {"provider": "clevercloud", "api_url": info["api"], "addon_id": addon,
            "consumer_key": info["consumer_key"], "consumer_secret": info["consumer_secret"],
            **extra}


def logged_in(xdg: Path, info: dict, name: str = "cc", **extra) -> CleverCloudProvider:
    write_config(xdg, {name: profile(info, **extra)})
    p = provider_from_profile(load_profile(name), interactive=False)
    assert isinstance(p, CleverCloudProvider)
    p.login(open_browser=http_browser)
    return p


def bucket_of(info: dict, user: str) -> str:
    return info["users"][user]["addons"][0]["buckets"][0]


def test_oauth1_login_then_cellar_keys_work(xdg, emu, info, debug_logs):
    p = logged_in(xdg, info, bucket=bucket_of(info, "alice"))
    keys = p.fetch()
    assert keys.expires_at is None and keys.session_token is None
    assert keys.endpoint_url == emu.sandbox.url and keys.region == "default"
    assert keys.bucket == bucket_of(info, "alice")
    assert_keys_work(keys, keys.bucket)
    stored = TokenStore("cc").load()
    assert stored["token"] and stored["secret"] and stored["expiration_date"]
    assert (TokenStore("cc").path.stat().st_mode & 0o777) == 0o600
    assert_no_secrets(debug_logs.text, [info["consumer_secret"], stored["secret"],
                                        keys.secret_key])


def test_organisation_addon_by_name_and_by_owner(xdg, emu, info):
    org_id, org = next(iter(info["organisations"].items()))
    addon = org["addons"][0]
    by_name = logged_in(xdg, info, "n", addon="acme-cellar").fetch()
    by_owner = logged_in(xdg, info, "o", addon=addon["realId"], owner_id=org_id).fetch()
    assert by_name.access_key == by_owner.access_key
    assert_keys_work(by_name, addon["buckets"][0])


def test_v4_credentials_api(xdg, emu, info):
    keys = logged_in(xdg, info, credentials_api="v4").fetch()
    assert_keys_work(keys, bucket_of(info, "alice"))


def test_users_are_isolated(xdg, emu, info):
    alice = logged_in(xdg, info, "a").fetch()
    emu.settings.active_user = "bob"
    bob = logged_in(xdg, info, "b", addon="bob-cellar").fetch()
    assert_keys_work(bob, bucket_of(info, "bob"))
    assert_isolated(alice, bucket_of(info, "bob"))
    assert_isolated(bob, bucket_of(info, "alice"))
    # and bob's login does not even see alice's add-on
    with pytest.raises(ProviderError, match="no add-on 'alice-cellar'"):
        logged_in(xdg, info, "b2", addon="alice-cellar").fetch()


def test_rotation_is_picked_up_by_a_fresh_fetch(xdg, emu, info):
    p = logged_in(xdg, info)
    old = p.fetch()
    emu.rotate("alice-cellar")
    with pytest.raises(ClientError) as ei:
        s3_client(old).list_objects_v2(Bucket=bucket_of(info, "alice"))
    assert ei.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    new = p.fetch()
    assert new.access_key != old.access_key
    assert_keys_work(new, bucket_of(info, "alice"))


def test_rotation_through_the_refresher(xdg, emu, info):
    """The store's path: S3 rejects the old key -> renew_after_rejection -> the rotated key."""
    now = [1000.0]
    r = Refresher(logged_in(xdg, info), clock=lambda: now[0], rand=lambda: 0.0)
    old = r.current()
    emu.rotate("alice-cellar")
    now[0] += 60
    new = r.renew_after_rejection(old)
    assert new is not None and new.access_key != old.access_key
    assert_keys_work(new, bucket_of(info, "alice"))


def test_revoked_token_needs_login(xdg, emu, info):
    p = logged_in(xdg, info)
    emu._hook_revoke({"token": TokenStore("cc").load()["token"]})
    with pytest.raises(ProviderError) as ei:
        p.fetch()
    assert ei.value.login_required and "s3mount login cc" in str(ei.value)


def test_expired_token_needs_login(xdg, emu, info, sandbox):
    emu.settings.token_lifetime = 60
    p = logged_in(xdg, info)
    p.fetch()
    sandbox.clock.advance(61)
    with pytest.raises(ProviderError) as ei:
        p.fetch()
    assert ei.value.login_required


def test_locally_expired_token_is_not_sent(xdg, emu, info):
    p = logged_in(xdg, info)
    p._clock = lambda: 10**11
    before = emu.stats["env"]
    with pytest.raises(ProviderError, match="expired") as ei:
        p.fetch()
    assert ei.value.login_required and emu.stats["env"] == before


# -- reusing clever-tools' login ------------------------------------------------------------------


def tools_profile(info: dict, **extra) -> dict:
    return profile(info, token_source="clever-tools", consumer_key=info["tools_consumer_key"],
                   consumer_secret=info["tools_consumer_secret"], **extra)


def test_clever_tools_json(xdg, emu, info, caplog):
    issued = emu._hook_issue({"user": "alice"})
    d = xdg / "clever-cloud"
    d.mkdir(mode=0o700)
    (d / "clever-tools.json").write_text(json.dumps({"version": 1, "profiles": [
        {"alias": "default", "token": issued["token"], "secret": issued["secret"],
         "expirationDate": issued["expirationDate"], "userId": "x"}]}))
    os.chmod(d / "clever-tools.json", 0o644)  # clever-tools writes with the umask: only a warning
    write_config(xdg, {"t": tools_profile(info)})
    keys = provider_from_profile(load_profile("t"), interactive=False).fetch()
    assert_keys_work(keys, bucket_of(info, "alice"))
    assert "readable by group/others" in caplog.text


def test_clever_tools_legacy_file_and_env(xdg, emu, info, monkeypatch):
    issued = emu._hook_issue({"user": "bob"})
    legacy = xdg / "legacy.json"
    legacy.write_text(json.dumps({"token": issued["token"], "secret": issued["secret"]}))
    write_config(xdg, {"t": tools_profile(info, addon="bob-cellar",
                                          clever_tools_file=str(legacy))})
    assert_keys_work(provider_from_profile(load_profile("t"), interactive=False).fetch(),
                     bucket_of(info, "bob"))
    legacy.unlink()
    monkeypatch.setenv("CLEVER_TOKEN", issued["token"])
    monkeypatch.setenv("CLEVER_SECRET", issued["secret"])
    assert_keys_work(provider_from_profile(load_profile("t"), interactive=False).fetch(),
                     bucket_of(info, "bob"))


def test_clever_tools_token_with_the_wrong_consumer_is_refused(xdg, emu, info, monkeypatch):
    issued = emu._hook_issue({"user": "alice"})
    monkeypatch.setenv("CLEVER_TOKEN", issued["token"])
    monkeypatch.setenv("CLEVER_SECRET", issued["secret"])
    write_config(xdg, {"t": profile(info, token_source="clever-tools")})  # s3mount's consumer
    with pytest.raises(ProviderError, match="clever login"):
        provider_from_profile(load_profile("t"), interactive=False).fetch()


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_login_then_credentials(xdg, emu, info, capsys):
    write_config(xdg, {"cc": profile(info)})
    status, _, err = run_cli(["login", "cc"], capsys)
    assert status == 0, err
    status, out, err = run_cli(["credentials", "cc"], capsys)
    assert status == 0, err
    doc = json.loads(out)
    assert doc["Version"] == 1 and "Expiration" not in doc and "SessionToken" not in doc


def test_cli_tampered_signature(xdg, emu, info, capsys):
    """A wrong consumer secret makes every signature wrong: the emulator refuses it."""
    write_config(xdg, {"cc": profile(info, consumer_secret="tampered")})
    bad = emu.stats["bad_signature"]
    status, _, err = run_cli(["login", "cc"], capsys)
    assert_one_line_error(status, err, "Invalid signature", "consumer_secret")
    assert emu.stats["bad_signature"] == bad + 1


def test_cli_revoked_token(xdg, emu, info, capsys):
    write_config(xdg, {"cc": profile(info)})
    assert run_cli(["login", "cc"], capsys)[0] == 0
    emu._hook_revoke({"token": TokenStore("cc").load()["token"]})
    status, _, err = run_cli(["credentials", "cc"], capsys)
    assert_one_line_error(status, err, "Token revoked", "s3mount login cc")


def test_cli_provider_down(xdg, emu, info, capsys):
    write_config(xdg, {"cc": profile(info)})
    assert run_cli(["login", "cc"], capsys)[0] == 0
    emu.down = True
    status, _, err = run_cli(["credentials", "cc"], capsys)
    assert_one_line_error(status, err, "unavailable", "503")


def test_renew_grace_keeps_the_old_key_for_a_while(xdg, emu, info, sandbox):
    emu.settings.renew_grace = 300
    p = logged_in(xdg, info)
    old = p.fetch()
    emu.rotate("alice-cellar")
    s3_client(old).list_objects_v2(Bucket=bucket_of(info, "alice"))  # still inside the grace
    sandbox.clock.advance(301)
    with pytest.raises(ClientError, match="ExpiredToken"):
        s3_client(old).list_objects_v2(Bucket=bucket_of(info, "alice"))
    assert_keys_work(p.fetch(), bucket_of(info, "alice"))


def test_oauth1_signer_matches_the_spec_test_vector():
    """PROVIDERS.md 3.2.4: HMAC-SHA512 over GET /v2/self with fixed timestamp and nonce."""
    auth = OAuth1Auth("ck", "cs", token="tk", token_secret="ts")
    auth._client.timestamp, auth._client.nonce = "1700000000", "abc"
    req = auth(requests.Request("GET", "https://api.clever-cloud.com/v2/self").prepare())
    header = req.headers["Authorization"]
    assert 'oauth_signature_method="HMAC-SHA512"' in header
    assert ('oauth_signature="UtJ1FloOnxTRH37H2QQBNg8EPTwgQtm1aHRYnURoSj%2FI2NAmlpzCQ84JqWcvfJA4W'
            'GY097utP%2BF6H5dWRyW%2FaA%3D%3D"') in header
