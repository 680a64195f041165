"""Cleverbase provider end to end: login through the emulator, keys on the sandbox S3, failures."""

from __future__ import annotations

import threading
import time
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
    python_m_s3mount,
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
from s3mount.credentials.cleverbase import CleverbaseProvider
from s3mount.credentials.refresher import Refresher, RefreshPolicy
from s3mount.sandbox.cleverbase import CleverbaseEmulator, CleverbaseSettings

xdg = pytest.fixture(xdg_home)
debug_logs = pytest.fixture(debug_caplog)


@pytest.fixture(scope="module")
def sandbox():
    return shared_sandbox()


@pytest.fixture(scope="module")
def emu_info(sandbox):
    emu = CleverbaseEmulator(sandbox, credential_lifetime=3600)
    info = emu.start()
    yield emu, info
    emu.stop()


@pytest.fixture
def emu(emu_info):
    """The emulator with default settings for each test."""
    emu, _ = emu_info
    emu.settings = CleverbaseSettings()
    emu.down = False
    return emu


@pytest.fixture
def info(emu_info):
    return emu_info[1]


def profile(info: dict, **extra) -> dict:
    return {"provider": "cleverbase", "issuer": info["issuer"], "api_url": info["api"],
            "client_id": info["client_id"], "client_secret": info["client_secret"], **extra}


def logged_in(xdg: Path, info: dict, name: str = "cb", **extra) -> CleverbaseProvider:
    write_config(xdg, {name: profile(info, **extra)})
    p = provider_from_profile(load_profile(name), interactive=False)
    assert isinstance(p, CleverbaseProvider)
    p.login(open_browser=http_browser)
    return p


def test_login_fetch_and_keys_work_on_own_bucket(xdg, emu, info, debug_logs):
    p = logged_in(xdg, info)
    keys = p.fetch()
    assert keys.bucket == emu.bucket_for(info["client_id"], "alice")
    assert keys.endpoint_url == emu.sandbox.url
    assert keys.session_token and keys.expires_at is not None
    assert abs(keys.expires_at - (emu.now() + 3600)) < 5
    assert_keys_work(keys, keys.bucket)
    stored = TokenStore("cb").load()
    assert stored is not None and "secretAccessKey" not in str(stored)
    assert keys.secret_key not in str(stored)  # short-lived S3 keys are never persisted
    assert (TokenStore("cb").path.stat().st_mode & 0o777) == 0o600
    assert_no_secrets(debug_logs.text, [info["client_secret"], stored["access_token"],
                                        keys.secret_key, keys.session_token])


def test_users_are_isolated(xdg, emu, info):
    alice = logged_in(xdg, info, "alice").fetch()
    emu.settings.active_user = "bob"
    bob = logged_in(xdg, info, "bob").fetch()
    assert alice.bucket != bob.bucket
    assert_keys_work(alice, alice.bucket)
    assert_keys_work(bob, bob.bucket)
    assert_isolated(alice, bob.bucket)
    assert_isolated(bob, alice.bucket)


def test_fetch_again_gives_new_keys_for_same_bucket(xdg, emu, info):
    p = logged_in(xdg, info)
    a, b = p.fetch(), p.fetch()
    assert a.access_key != b.access_key and a.bucket == b.bucket


def test_without_discovery_the_fixed_paths_are_used(xdg, emu, info):
    emu.settings.discovery = False
    before = emu.stats["discovery"]
    keys = logged_in(xdg, info).fetch()
    assert emu.stats["discovery"] == before + 1  # tried, got 404, fell back
    assert_keys_work(keys, keys.bucket)


def test_headless_login_reads_the_pasted_redirect(xdg, emu, info, capsys):
    write_config(xdg, {"cb": profile(info)})
    p = provider_from_profile(load_profile("cb"), interactive=False)

    def paste() -> str:
        url = capsys.readouterr().err.split("Open this URL in a browser and log in:\n  ")[1]
        r = requests.get(url.splitlines()[0], allow_redirects=False, timeout=10)
        assert r.status_code == 302
        return r.headers["Location"] + "\n"

    p.login(headless=True, read_line=paste)
    keys = p.fetch()
    assert_keys_work(keys, keys.bucket)


def test_expiration_formats_are_parsed(xdg, emu, info):
    p = logged_in(xdg, info)
    for fmt in ("fraction", "offset", "Z"):
        emu.settings.expiration_format = fmt
        keys = p.fetch()
        assert abs(keys.expires_at - (emu.now() + 3600)) < 5, fmt


def test_expired_access_token_without_refresh_token_needs_login(xdg, emu, info, sandbox):
    p = logged_in(xdg, info)
    p.fetch()
    sandbox.clock.advance(3601)  # the emulator now refuses the token (401)
    with pytest.raises(ProviderError) as ei:
        p.fetch()
    assert ei.value.login_required and "s3mount login cb" in str(ei.value)


def test_locally_expired_token_is_not_even_sent(xdg, emu, info):
    p = logged_in(xdg, info)
    p._clock = lambda: 10**10  # the client's clock says the token expired long ago
    before = emu.stats["credentials"]
    with pytest.raises(ProviderError) as ei:
        p.fetch()
    assert ei.value.login_required
    assert emu.stats["credentials"] == before


def test_refresh_token_is_used_when_issued(xdg, emu, info, sandbox, debug_logs):
    emu.settings.refresh_tokens = True
    p = logged_in(xdg, info)
    first_rt = TokenStore("cb").load()["refresh_token"]
    assert first_rt
    p.fetch()
    issued = emu.stats["tokens_issued"]
    sandbox.clock.advance(3601)
    keys = p.fetch()  # 401 -> refresh grant -> retry
    assert emu.stats["tokens_issued"] == issued + 1
    stored = TokenStore("cb").load()
    assert stored["refresh_token"] and stored["refresh_token"] != first_rt  # rotated and saved
    assert_keys_work(keys, keys.bucket)
    assert_no_secrets(debug_logs.text, [first_rt, stored["refresh_token"],
                                        stored["access_token"], keys.secret_key])


def test_access_denied_at_authorize_is_reported(xdg, emu, info):
    emu.settings.authorize_fault = "access_denied"
    with pytest.raises(ProviderError, match="access_denied.*authentication challenge expired"):
        logged_in(xdg, info)


def test_interactive_first_fetch_logs_in(xdg, emu, info):
    write_config(xdg, {"cb": profile(info)})
    p = provider_from_profile(load_profile("cb"), interactive=True)
    keys = p.fetch()  # no stored login: the first fetch runs it
    assert_keys_work(keys, keys.bucket)
    TokenStore("cb").delete()
    with pytest.raises(ProviderError) as ei:  # later fetches never prompt
        p.fetch()
    assert ei.value.login_required


def test_profile_bucket_must_match_the_assigned_one(xdg, emu, info):
    p = logged_in(xdg, info, bucket="not-mine")
    with pytest.raises(ProviderError, match="assigns bucket"):
        p.fetch()


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_login_then_credentials(xdg, emu, info, capsys):
    import json

    write_config(xdg, {"cb": profile(info)})
    status, out, err = run_cli(["login", "cb"], capsys)
    assert status == 0, err
    status, out, err = run_cli(["credentials", "cb"], capsys)
    assert status == 0, err
    doc = json.loads(out)
    assert doc["Version"] == 1 and doc["SessionToken"] and doc["Expiration"].endswith("Z")
    assert doc["AccessKeyId"] and doc["SecretAccessKey"]


def test_cli_wrong_client_secret(xdg, emu, info, capsys):
    write_config(xdg, {"cb": profile(info, client_secret="not-the-secret")})
    refused = emu.stats["token_invalid_client"]
    status, _, err = run_cli(["login", "cb"], capsys)
    assert_one_line_error(status, err, "invalid_client", "client_secret")
    assert emu.stats["token_invalid_client"] == refused + 1  # refused by the emulator
    assert "not-the-secret" not in err


def test_cli_wrong_scope(xdg, emu, info, capsys):
    write_config(xdg, {"cb": profile(info, scope="openid")})
    status, _, err = run_cli(["login", "cb"], capsys)  # login works, the keys do not
    assert_one_line_error(status, err, "403", "com.cleverbase.storage")
    status, _, err = run_cli(["credentials", "cb"], capsys)
    assert_one_line_error(status, err, "403", "com.cleverbase.storage")


def test_cli_not_logged_in(xdg, emu, info, capsys):
    write_config(xdg, {"cb": profile(info)})
    status, _, err = run_cli(["credentials", "cb"], capsys)
    assert_one_line_error(status, err, "s3mount login cb")


def test_cli_provider_unreachable(xdg, emu, info):
    dead = "http://127.0.0.1:9"
    write_config(xdg, {"cb": profile(info, issuer=dead, api_url=dead)})
    status, out, err = python_m_s3mount(["login", "cb"], {"XDG_CONFIG_HOME": str(xdg),
                                                          "S3MOUNT_TEST_BROWSER": "http"})
    assert_one_line_error(status, err, "cannot reach", "127.0.0.1:9")


def test_cli_provider_down(xdg, emu, info, capsys):
    write_config(xdg, {"cb": profile(info)})
    assert run_cli(["login", "cb"], capsys)[0] == 0
    emu.down = True
    status, _, err = run_cli(["credentials", "cb"], capsys)
    assert_one_line_error(status, err, "unavailable", "503")


def test_injected_fault_is_retryable_then_recovers(xdg, emu, info):
    p = logged_in(xdg, info)
    emu.add_fault("/v1/credentials", 500, '{"title": "provisioning failed"}')
    with pytest.raises(ProviderError) as ei:
        p.fetch()
    assert ei.value.retryable and "HTTP 500" in str(ei.value)
    assert_keys_work(p.fetch(), emu.bucket_for(info["client_id"], "alice"))


def test_warns_before_an_unrenewable_login_ends(xdg, emu, info, caplog):
    emu.settings.access_token_lifetime = 1200
    p = logged_in(xdg, info)
    p.fetch()
    assert "cannot be renewed without you" in caplog.text


def test_refresher_renews_before_expiry_on_the_sandbox_clock(xdg, emu, info, sandbox):
    p = logged_in(xdg, info)
    r = Refresher(p, clock=sandbox.clock.now, rand=lambda: 0.0)
    r.start()
    try:
        first = r.current()
        sandbox.clock.advance(r.status().next_refresh_at - sandbox.clock.now())  # 15 min left
        deadline = time.monotonic() + 10
        while r.current() == first:
            assert time.monotonic() < deadline, "no renewal"
            r._wake.set()
            time.sleep(0.01)
        renewed = r.current()
        assert renewed.bucket == first.bucket and renewed.expires_at > first.expires_at
        sandbox.clock.advance(first.expires_at - sandbox.clock.now() + 1)
        with pytest.raises(ClientError, match="ExpiredToken"):
            s3_client(first).list_objects_v2(Bucket=first.bucket)
        assert_keys_work(renewed, renewed.bucket)  # the mount would never have noticed
    finally:
        r.stop()


def test_failed_renewal_is_one_fetch_shared_and_remembered(xdg, emu, info, request):
    """Issue 16.9: 16 requests whose keys were refused, a provider that takes a second to fail.
    One fetch reaches the provider, every waiter gets its outcome within that second, and the
    failure is remembered briefly: later callers fail at once, without a fetch."""
    path = "/v1/credentials"
    offset = [0.0]
    r = Refresher(logged_in(xdg, info), clock=lambda: time.time() + offset[0], rand=lambda: 0.0)
    rejected = r.current()
    emu.add_fault(path, 503, '{"title": "provisioning failed"}', delay=1.0, count=100)
    request.addfinalizer(emu.clear_faults)
    waiters = 16
    start = threading.Barrier(waiters)
    results: list[object] = []
    took: list[float] = []

    def renew() -> None:
        start.wait()
        t0 = time.monotonic()
        results.append(r.renew_after_rejection(rejected))
        took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=renew) for _ in range(waiters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert 100 - emu.pending_faults(path) == 1, "one fetch for all waiters"
    assert results == [None] * waiters
    assert max(took) < 2.5, took  # one slow attempt (1 s), not sixteen in a row
    t0 = time.monotonic()
    assert r.renew_after_rejection(rejected) is None
    assert time.monotonic() - t0 < 0.2 and 100 - emu.pending_faults(path) == 1
    offset[0] += RefreshPolicy().failure_memory  # forgotten: the next caller asks again
    assert r.renew_after_rejection(rejected) is None
    assert 100 - emu.pending_faults(path) == 2
    # The first keys of a mount (nobody has any yet) are single-flight the same way.
    fresh = Refresher(logged_in(xdg, info, "cb2"), clock=time.time, rand=lambda: 0.0)
    errors: list[BaseException] = []

    def first() -> None:
        start.wait()
        try:
            fresh.current()
        except ProviderError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first) for _ in range(waiters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == waiters and all("HTTP 503" in str(e) for e in errors), errors
    assert 100 - emu.pending_faults(path) == 3
