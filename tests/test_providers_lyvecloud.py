"""Lyve Cloud providers end to end: Account API service accounts and LC2 STS, through the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
from s3mount.credentials.build import provider_from_profile
from s3mount.credentials.lyvecloud import LyveCloudProvider, LyveSTSProvider, _sa_expiry
from s3mount.sandbox.lyvecloud import LyveCloudEmulator, LyveSettings

xdg = pytest.fixture(xdg_home)
debug_logs = pytest.fixture(debug_caplog)


@pytest.fixture(scope="module")
def sandbox():
    return shared_sandbox()


@pytest.fixture(scope="module")
def emu_info(sandbox):
    emu = LyveCloudEmulator(sandbox)
    info = emu.start()
    yield emu, info
    emu.stop()


@pytest.fixture
def emu(emu_info):
    emu, _ = emu_info
    emu.settings = LyveSettings()
    emu.down = False
    return emu


@pytest.fixture
def info(emu_info):
    return emu_info[1]


def profile(info: dict, account: str = "acme", bucket: int = 0, **extra) -> dict:
    acc = info["accounts"][account]
    return {"provider": "lyvecloud", "api_url": info["api"], "account_id": account,
            "account_access_key": acc["access_key"], "account_secret": acc["secret"],
            "bucket": acc["buckets"][bucket], "endpoint_url": info["s3"], **extra}


def provider(xdg: Path, info: dict, name: str = "ly", sandbox=None, **extra) -> LyveCloudProvider:
    write_config(xdg, {name: profile(info, **extra)})
    p = provider_from_profile(load_profile(name), interactive=False)
    assert isinstance(p, LyveCloudProvider)
    if sandbox is not None:
        p._sleep = sandbox.clock.advance  # waiting for readiness moves the fake clock, no sleep
    return p


def test_service_account_keys_work_and_secret_is_persisted_at_once(xdg, emu, info, sandbox,
                                                                   debug_logs):
    emu.settings.ready_delay = 5  # the new account is not ready at first: the client polls
    p = provider(xdg, info, sandbox=sandbox)
    seen_while_waiting = []

    def sleep(seconds: float) -> None:
        seen_while_waiting.append((TokenStore("ly").load() or {}).get("service_account"))
        sandbox.clock.advance(seconds)

    p._sleep = sleep
    keys = p.fetch()
    bucket = info["accounts"]["acme"]["buckets"][0]
    assert keys.bucket == bucket and keys.expires_at is None
    assert_keys_work(keys, bucket)
    stored = TokenStore("ly").load()["service_account"]
    assert stored["secret"] == keys.secret_key
    # persisted before the account was even ready
    assert any(s and s["secret"] == keys.secret_key for s in seen_while_waiting)
    assert (TokenStore("ly").path.stat().st_mode & 0o777) == 0o600
    assert_no_secrets(debug_logs.text, [keys.secret_key, info["accounts"]["acme"]["secret"]])


def test_second_fetch_reuses_account_and_token(xdg, emu, info):
    p = provider(xdg, info)
    created, logins = emu.stats["sa_created"], emu.stats["auth_token"]
    a, b = p.fetch(), p.fetch()
    assert a.access_key == b.access_key
    assert emu.stats["sa_created"] == created + 1
    assert emu.stats["auth_token"] == logins + 1  # the session token is cached


def test_not_ready_mutations_are_retried_with_backoff(xdg, emu, info, sandbox):
    p = provider(xdg, info)
    perm = p._permission()
    emu.settings.ready_delay = 5
    sa = p._api("POST", "/service-accounts", {"name": "fresh", "permissions": [perm]}).json()
    slept: list[float] = []
    p._sleep = lambda s: (slept.append(s), sandbox.clock.advance(s))
    r = p._api("DELETE", f"/service-accounts/{sa['id']}/enabled")  # 409 NotReady at first
    assert r.status_code == 200 and slept == [1.0, 2.0, 4.0]
    assert emu.stats["error_ServiceAccountNotReady"] >= 3


def test_expired_session_token_triggers_one_relogin(xdg, emu, info, sandbox):
    p = provider(xdg, info)
    p.fetch()
    logins = emu.stats["auth_token"]
    sandbox.clock.advance(86401)  # the cached token is now expired on the server
    p.fetch()
    assert emu.stats["auth_token"] == logins + 1
    assert emu.stats["error_ExpiredToken"] >= 1


def test_isolation_between_accounts_and_buckets(xdg, emu, info):
    acme = provider(xdg, info, "a").fetch()
    globex = provider(xdg, info, "g", account="globex").fetch()
    assert_keys_work(globex, info["accounts"]["globex"]["buckets"][0])
    assert_isolated(acme, info["accounts"]["globex"]["buckets"][0])
    assert_isolated(globex, info["accounts"]["acme"]["buckets"][0])
    # bucket-names scoping: not even the account's other bucket
    assert_isolated(acme, info["accounts"]["acme"]["buckets"][1])


def test_rotation_before_expiry(xdg, emu, info):
    emu.settings.sa_expiration_days = 30
    p = provider(xdg, info)
    old = p.fetch()
    stored = TokenStore("ly").load()["service_account"]
    assert stored["expirationDate"] and old.expires_at == _sa_expiry(stored)
    p._clock = lambda: old.expires_at - 3600  # an hour before expiry: rotate
    deleted = emu.stats["sa_deleted"]
    new = p.fetch()
    assert new.access_key != old.access_key
    assert TokenStore("ly").load()["service_account"]["accessKey"] == new.access_key
    assert emu.stats["sa_deleted"] == deleted + 1
    assert_keys_work(new, new.bucket)
    with pytest.raises(ClientError) as ei:
        s3_client(old).list_objects_v2(Bucket=new.bucket)
    assert ei.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_changed_bucket_gets_a_new_service_account(xdg, emu, info):
    first = provider(xdg, info).fetch()
    second = provider(xdg, info, bucket=1).fetch()  # same profile name, other bucket
    assert second.access_key != first.access_key
    assert_keys_work(second, info["accounts"]["acme"]["buckets"][1])
    with pytest.raises(ClientError):  # the replaced account was retired
        s3_client(first).list_objects_v2(Bucket=first.bucket)


def test_disabled_service_account_is_reported(xdg, emu, info):
    p = provider(xdg, info)
    keys = p.fetch()
    sid = TokenStore("ly").load()["service_account"]["id"]
    p._api("DELETE", f"/service-accounts/{sid}/enabled")  # what an administrator would do
    with pytest.raises(ClientError):
        s3_client(keys).list_objects_v2(Bucket=keys.bucket)
    with pytest.raises(ProviderError, match="disabled"):
        p.fetch()


def test_deleted_service_account_is_replaced(xdg, emu, info):
    p = provider(xdg, info)
    old = p.fetch()
    sid = TokenStore("ly").load()["service_account"]["id"]
    p._api("DELETE", f"/service-accounts/{sid}")
    new = p.fetch()
    assert new.access_key != old.access_key
    assert_keys_work(new, new.bucket)


def test_api_down_keeps_stored_keys_but_cannot_create(xdg, emu, info):
    p = provider(xdg, info)
    keys = p.fetch()
    emu.down = True
    assert p.fetch().access_key == keys.access_key  # long-lived keys outlive an API outage
    fresh = provider(xdg, info, "fresh")
    with pytest.raises(ProviderError) as ei:
        fresh.fetch()
    assert ei.value.retryable


@pytest.mark.parametrize("setting", [{"expiration_sec_as_int": True},
                                     {"trailing_slash_required": True},
                                     {"auth_failed_trailing_space": False}])
def test_server_variants(xdg, emu, info, setting):
    for k, v in setting.items():
        setattr(emu.settings, k, v)
    keys = provider(xdg, info).fetch()
    assert_keys_work(keys, keys.bucket)


def test_login_prompts_and_stores_account_keys(xdg, emu, info):
    acc = info["accounts"]["acme"]
    p = provider(xdg, info, account_access_key="", account_secret="")
    answers = iter([acc["access_key"], acc["secret"]])
    p._prompt = lambda _: next(answers)
    p.login()
    assert TokenStore("ly").load()["account"]["secret"] == acc["secret"]
    again = provider_from_profile(load_profile("ly"), interactive=False)
    assert_keys_work(again.fetch(), acc["buckets"][0])


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_credentials(xdg, emu, info, capsys):
    write_config(xdg, {"ly": profile(info)})
    status, out, err = run_cli(["login", "ly"], capsys)
    assert status == 0, err
    status, out, err = run_cli(["credentials", "ly"], capsys)
    assert status == 0, err
    assert json.loads(out)["SecretAccessKey"] == TokenStore("ly").load()["service_account"][
        "secret"]


def test_cli_expired_token(xdg, emu, info, capsys):
    emu.settings.token_lifetime = 0  # every token is already expired when it arrives
    write_config(xdg, {"ly": profile(info)})
    expired = emu.stats["error_ExpiredToken"]
    status, _, err = run_cli(["credentials", "ly"], capsys)
    assert_one_line_error(status, err, "ExpiredToken")
    assert emu.stats["error_ExpiredToken"] == expired + 2  # refused, re-login, refused again


def test_cli_bad_account_credentials(xdg, emu, info, capsys):
    write_config(xdg, {"ly": profile(info, account_secret="wrong")})
    status, _, err = run_cli(["login", "ly"], capsys)
    assert_one_line_error(status, err, "(AuthenticationFailed)", "profile ly")


def test_cli_unreachable(xdg, emu, info, capsys):
    write_config(xdg, {"ly": profile(info, api_url="http://127.0.0.1:9/v2")})
    status, _, err = run_cli(["credentials", "ly"], capsys)
    assert_one_line_error(status, err, "cannot reach the Lyve Cloud API")


# -- Lyve Cloud 2 STS ---------------------------------------------------------------------------


def lc2_profile(info: dict, account: str = "acme", **extra) -> dict:
    acc = info["accounts"][account]
    return {"provider": "lc2", "sts_url": info["sts"], "endpoint_url": info["s3"],
            "bucket": acc["buckets"][0], "access_key": acc["lc2_access_key"],
            "secret_key": acc["lc2_secret_key"], **extra}


def test_lc2_assume_role_keys_work_and_are_isolated(xdg, emu, info, sandbox, debug_logs):
    write_config(xdg, {"a": lc2_profile(info), "g": lc2_profile(info, "globex")})
    a = provider_from_profile(load_profile("a"), interactive=False)
    assert isinstance(a, LyveSTSProvider)
    keys = a.fetch()
    assert keys.session_token and abs(keys.expires_at - (sandbox.clock.now() + 3600)) < 5
    assert_keys_work(keys, keys.bucket)
    g = provider_from_profile(load_profile("g"), interactive=False).fetch()
    assert_isolated(keys, g.bucket)
    assert_isolated(g, keys.bucket)
    assert TokenStore("a").load() is None  # temporary keys are never stored
    assert_no_secrets(debug_logs.text, [keys.secret_key, keys.session_token,
                                        info["accounts"]["acme"]["lc2_secret_key"]])


def test_cli_lc2_refusals(xdg, emu, info, capsys):
    write_config(xdg, {"bad": lc2_profile(info, secret_key="tampered"),
                       "short": lc2_profile(info, duration_seconds=600)})
    status, _, err = run_cli(["credentials", "bad"], capsys)
    assert_one_line_error(status, err, "SignatureDoesNotMatch")
    status, _, err = run_cli(["credentials", "short"], capsys)
    assert_one_line_error(status, err, "duration_seconds", "900-43200")
