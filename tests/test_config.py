"""Profiles and the token store: validation, the ssh-style permission rules, atomic 0600 writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from provider_support import run_cli, write_config, xdg_home

from s3mount.config import (
    PROFILE_KEYS,
    PROVIDER_KINDS,
    ConfigError,
    TokenStore,
    load_profile,
)
from s3mount.credentials.build import provider_from_profile
from s3mount.credentials.static import EnvironmentProvider, StaticProvider

xdg = pytest.fixture(xdg_home)


def test_profile_keys_are_all_described():
    assert all(isinstance(v, str) and len(v) > 10 for v in PROFILE_KEYS.values())
    assert all(kind in PROFILE_KEYS["provider"] for kind in PROVIDER_KINDS)


def test_load_profile(xdg):
    write_config(xdg, {"work": {"provider": "static", "bucket": "b", "access_key": "AK",
                                "secret_key": "SK", "redirect_port": 8765}})
    p = load_profile("work")
    assert p == {"provider": "static", "bucket": "b", "access_key": "AK", "secret_key": "SK",
                 "redirect_port": 8765, "name": "work"}


@pytest.mark.parametrize("body, message", [
    ({"provider": "static", "bucket_name": "x"}, "unknown key(s) bucket_name"),
    ({"provider": "dropbox"}, "provider must be one of"),
    ({"provider": "cleverbase", "redirect_port": "80"}, "redirect_port must be an integer"),
    ({"provider": "cleverbase", "client_id": 5}, "client_id must be a string"),
])
def test_bad_profiles_are_refused(xdg, body, message):
    write_config(xdg, {"p": body})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_profile("p")


def test_missing_config_and_profile(xdg):
    with pytest.raises(ConfigError, match="no config file at"):
        load_profile("p")
    write_config(xdg, {"a": {"provider": "env"}, "b": {"provider": "env"}})
    with pytest.raises(ConfigError, match=r"no profile 'c' .*\(profiles: a, b\)"):
        load_profile("c")


def test_bad_toml_is_one_clear_error(xdg):
    path = write_config(xdg, {})
    path.write_text("[profiles.x\nprovider = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile("x")


def test_readable_config_is_refused(xdg, capsys):
    path = write_config(xdg, {"p": {"provider": "env"}})
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by group/others.*chmod 600"):
        load_profile("p")
    status, _, err = run_cli(["credentials", "p"], capsys)
    assert status != 0 and err.count("\n") == 1 and "chmod 600" in err


def test_config_owned_by_someone_else_is_refused(xdg):
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    path = write_config(xdg, {"p": {"provider": "env"}})
    os.chown(path, 12345, -1)
    with pytest.raises(ConfigError, match="owned by uid 12345"):
        load_profile("p")


def test_token_store_writes_0600_atomically(xdg):
    old = os.umask(0)  # a careless umask must not matter
    try:
        store = TokenStore("work")
        assert store.load() is None
        store.save({"token": "t1"})
        store.update(secret="s1")
    finally:
        os.umask(old)
    assert store.load() == {"token": "t1", "secret": "s1"}
    assert store.path == xdg / "s3mount" / "tokens" / "work.json"
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.directory.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in store.directory.iterdir()] == ["work.json"]  # no temp files left


def test_token_store_refuses_loose_files(xdg):
    store = TokenStore("work")
    store.save({"token": "t"})
    os.chmod(store.path, 0o640)
    with pytest.raises(ConfigError, match="token file .* readable by group/others"):
        store.load()
    os.chmod(store.path, 0o600)
    os.chmod(store.directory, 0o755)
    with pytest.raises(ConfigError, match="token directory .* chmod 700"):
        store.load()
    with pytest.raises(ConfigError):
        store.save({"token": "t2"})


def test_token_store_rejects_path_tricks():
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError):
            TokenStore(bad)


def test_static_and_env_providers_from_profile(xdg):
    write_config(xdg, {"s": {"provider": "static", "access_key": "AK", "secret_key": "SK",
                             "bucket": "b", "endpoint_url": "http://h", "region": "r"},
                       "e": {"provider": "env", "endpoint_url": "http://h"}})
    s = provider_from_profile(load_profile("s"), interactive=False)
    assert isinstance(s, StaticProvider)
    k = s.fetch()
    assert (k.access_key, k.secret_key, k.bucket, k.endpoint_url, k.region) == \
        ("AK", "SK", "b", "http://h", "r")
    assert isinstance(provider_from_profile(load_profile("e"), interactive=False),
                      EnvironmentProvider)


@pytest.mark.parametrize("body, missing", [
    ({"provider": "static", "access_key": "AK"}, "secret_key"),
    ({"provider": "cleverbase", "client_id": "c"}, "client_secret"),
    ({"provider": "clevercloud", "consumer_key": "k", "consumer_secret": "s"}, "addon_id"),
    ({"provider": "clevercloud", "addon_id": "a"}, "consumer_key, consumer_secret"),
    ({"provider": "lyvecloud", "account_id": "a"}, "bucket"),
    ({"provider": "lc2", "bucket": "b", "endpoint_url": "https://e"}, "sts_url"),
])
def test_missing_provider_keys_are_named(xdg, body, missing):
    write_config(xdg, {"p": body})
    with pytest.raises(ConfigError, match=f"needs {missing}"):
        provider_from_profile(load_profile("p"), interactive=False)


def test_clevercloud_with_clever_tools_needs_no_consumer_in_profile(xdg):
    write_config(xdg, {"p": {"provider": "clevercloud", "addon_id": "a",
                             "token_source": "clever-tools"}})
    assert provider_from_profile(load_profile("p"), interactive=False).name == "clevercloud"


def test_cli_login_on_a_static_profile(xdg, capsys):
    write_config(xdg, {"s": {"provider": "static", "access_key": "AK", "secret_key": "SK"}})
    status, _, err = run_cli(["login", "s"], capsys)
    assert status != 0 and "nothing to log in to" in err and err.count("\n") == 1


def test_xdg_default_is_home_config(monkeypatch, tmp_path: Path):
    from s3mount.config import config_path

    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path() == tmp_path / ".config" / "s3mount" / "config.toml"


def test_one_invalid_profile_leaves_the_others_usable(xdg):
    write_config(xdg, {"good": {"provider": "env"},
                       "bad": {"provider": "static", "endpoint_url": "s3.example.com:9000"}})
    assert load_profile("good")["provider"] == "env"
    with pytest.raises(ConfigError, match=r"\[profiles.bad\]: endpoint_url: bad endpoint URL "
                                          r"'s3.example.com:9000': it has no http:// or https://"):
        load_profile("bad")
    with pytest.raises(ConfigError, match=r"no profile 'nope' .*\(profiles: bad, good\)"):
        load_profile("nope")
