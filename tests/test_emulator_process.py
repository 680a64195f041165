"""The emulators as mount-level tests use them: in ``python -m s3mount.sandbox`` (SandboxProcess),
driven through the state file and admin hooks, with ``python -m s3mount`` as the user runs it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from provider_support import assert_one_line_error, python_m_s3mount, write_config

from s3mount.sandbox.client import SandboxProcess
from s3mount.sandbox.emubase import admin_call
from s3mount.store.base import KeySet


@pytest.fixture(scope="module")
def sp():
    with SandboxProcess(providers=["cleverbase", "clevercloud", "lyvecloud"],
                        credential_lifetime=900) as sp:
        yield sp


def profiles(state: dict) -> dict[str, dict]:
    cb, cc, ly = state["cleverbase"], state["clevercloud"], state["lyvecloud"]
    acme = ly["accounts"]["acme"]
    return {
        "cb": {"provider": "cleverbase", "issuer": cb["issuer"], "api_url": cb["api"],
               "client_id": cb["client_id"], "client_secret": cb["client_secret"]},
        "cc": {"provider": "clevercloud", "api_url": cc["api"], "addon_id": "alice-cellar",
               "consumer_key": cc["consumer_key"], "consumer_secret": cc["consumer_secret"]},
        "ly": {"provider": "lyvecloud", "api_url": ly["api"], "account_id": "acme",
               "account_access_key": acme["access_key"], "account_secret": acme["secret"],
               "bucket": acme["buckets"][0], "endpoint_url": ly["s3"]},
        "lc2": {"provider": "lc2", "sts_url": ly["sts"], "endpoint_url": ly["s3"],
                "bucket": acme["buckets"][0], "access_key": acme["lc2_access_key"],
                "secret_key": acme["lc2_secret_key"]},
    }


def test_login_and_credentials_through_the_sandbox_process(sp, tmp_path: Path):
    home = tmp_path / "config"
    home.mkdir(mode=0o700)
    write_config(home, profiles(sp.state))
    env = {"XDG_CONFIG_HOME": str(home), "S3MOUNT_TEST_BROWSER": "http"}
    alice_cellar = sp.state["clevercloud"]["users"]["alice"]["addons"][0]["buckets"][0]
    buckets = {"cb": None, "cc": alice_cellar,
               "ly": sp.state["lyvecloud"]["accounts"]["acme"]["buckets"][0],
               "lc2": sp.state["lyvecloud"]["accounts"]["acme"]["buckets"][0]}
    for name, bucket in buckets.items():
        status, _, err = python_m_s3mount(["login", name], env)
        assert status == 0, err
        if bucket is None:  # Cleverbase assigns the bucket; login tells which
            bucket = err.split("keys for bucket ")[1].split()[0]
            assert bucket.startswith("cb-")
        status, out, err = python_m_s3mount(["credentials", name], env)
        assert status == 0, err
        doc = json.loads(out)
        s3 = sp.s3(KeySet(doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("SessionToken")))
        s3.put_object(Bucket=bucket, Key=f"from-{name}", Body=name.encode())
        assert s3.get_object(Bucket=bucket, Key=f"from-{name}")["Body"].read() == name.encode()
    assert oct(os.stat(home / "s3mount" / "tokens" / "ly.json").st_mode & 0o777) == "0o600"


def test_admin_hooks_across_processes(sp, tmp_path: Path):
    home = tmp_path / "config"
    home.mkdir(mode=0o700)
    write_config(home, profiles(sp.state))
    env = {"XDG_CONFIG_HOME": str(home), "S3MOUNT_TEST_BROWSER": "http"}
    cb = sp.state["cleverbase"]
    assert python_m_s3mount(["login", "cb"], env)[0] == 0
    admin_call(cb["admin_url"], cb["admin_token"], "down")
    try:
        status, _, err = python_m_s3mount(["credentials", "cb"], env)
        assert_one_line_error(status, err, "unavailable", "503")
    finally:
        admin_call(cb["admin_url"], cb["admin_token"], "up")
    assert python_m_s3mount(["credentials", "cb"], env)[0] == 0
    sp.advance_clock(3601)  # the 1 h access token is now expired; no refresh token was issued
    status, _, err = python_m_s3mount(["credentials", "cb"], env)
    assert_one_line_error(status, err, "s3mount login cb")
