"""Issue #4 through real mounts: each provider's keys, renewed under load, revoked, or unavailable.

One sandbox process runs the S3 server and all three emulators; Cleverbase credentials live 20 s
there, so a two-minute run sees several renewals. Every mount is of a profile, logged in through
the provider's real flow (the emulator's consent page approves at once).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountlib import S3MOUNT, Mounter, mount_status, run

from s3mount.cli.demo import PROFILES
from s3mount.sandbox.client import SandboxProcess
from s3mount.sandbox.emubase import admin_call

LIFETIME = 20.0


@pytest.fixture(scope="module")
def psb() -> Iterator[SandboxProcess]:
    with SandboxProcess(providers=["cleverbase", "clevercloud", "lyvecloud"],
                        credential_lifetime=LIFETIME) as sb:
        yield sb


def profile_env(sb: SandboxProcess, provider: str, tmp: Path, **extra: Any) -> dict[str, str]:
    """A private XDG_CONFIG_HOME with profile ``p`` for ``provider``, logged in."""
    home = tmp / f"config-{provider}"
    (home / "s3mount").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    prof = {**PROFILES[provider](sb.state[provider]), **extra}
    body = "".join(f'{k} = "{v}"\n' for k, v in prof.items())
    cfg = home / "s3mount" / "config.toml"
    cfg.write_text(f"[profiles.p]\n{body}")
    os.chmod(cfg, 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(XDG_CONFIG_HOME=str(home), XDG_STATE_HOME=str(tmp / "state"),
               S3MOUNT_TEST_BROWSER="http")
    r = subprocess.run([*S3MOUNT, "login", "p"], env=env, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return env


@pytest.mark.parametrize("provider", ["cleverbase", "clevercloud", "lyvecloud"])
def test_each_provider_end_to_end(psb: SandboxProcess, tmp_path: Path, provider: str) -> None:
    env = profile_env(psb, provider, tmp_path)
    mounter = Mounter(psb, tmp_path)
    try:
        m = mounter("", env=env, profile="p")
        (m.path / "dir").mkdir()
        (m.path / "dir" / "hello.txt").write_text(f"hello from {provider}")
        assert (m.path / "dir" / "hello.txt").read_text() == f"hello from {provider}"
        # Large enough to stream as a multipart upload, then renamed (server-side copy) and
        # chmodded (copy onto itself): all within what the provider's keys allow (Cleverbase's
        # allow only GetObject, PutObject, DeleteObject and ListBucket).
        big = os.urandom(20 * 1024 * 1024 + 7)
        (m.path / "big.bin").write_bytes(big)
        os.rename(m.path / "big.bin", m.path / "dir" / "moved.bin")
        os.chmod(m.path / "dir" / "moved.bin", 0o600)
        assert (m.path / "dir" / "moved.bin").read_bytes() == big
        st = mount_status(m.path, m.env)
        assert st["provider"] == provider
        s3 = psb.s3()
        body = s3.get_object(Bucket=st["bucket"], Key="dir/hello.txt")["Body"].read()
        assert body == f"hello from {provider}".encode()
        assert s3.get_object(Bucket=st["bucket"], Key="dir/moved.bin")["Body"].read() == big
        assert "AccessDenied" not in m.log() and "access denied" not in m.log()
    finally:
        mounter.close()


def test_renewals_under_continuous_io(psb: SandboxProcess, tmp_path: Path) -> None:
    """20-second credentials (renewed every ~13 s), a minute of reads and writes: no failed
    operation."""
    env = profile_env(psb, "cleverbase", tmp_path)
    mounter = Mounter(psb, tmp_path)
    try:
        m = mounter("", env=env, profile="p")
        first = mount_status(m.path, m.env)
        errors: list[str] = []
        done = {"ops": 0}
        stop = time.monotonic() + 60

        def worker(n: int) -> None:
            i = 0
            while time.monotonic() < stop:
                p = m.path / f"w{n}-{i % 20}"
                data = os.urandom(1000 + i)
                try:
                    p.write_bytes(data)
                    if p.read_bytes() != data:
                        errors.append(f"mismatch {p}")
                    os.listdir(m.path)
                    done["ops"] += 3
                except OSError as e:
                    errors.append(f"{p}: {e}")
                i += 1

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        last = mount_status(m.path, m.env)
        assert not errors, errors[:5]
        assert done["ops"] > 100
        assert last["renewals"] >= 3, last
        assert last["credentials_expire_at"] > first["credentials_expire_at"]
    finally:
        mounter.close()


def test_revoked_keys_are_renewed_on_next_operation(psb: SandboxProcess, tmp_path: Path) -> None:
    env = profile_env(psb, "cleverbase", tmp_path)
    mounter = Mounter(psb, tmp_path)
    try:
        m = mounter("", env=env, profile="p")
        bucket = mount_status(m.path, m.env)["bucket"]
        (m.path / "before").write_text("1")
        assert psb.revoke_bucket(bucket) >= 1
        (m.path / "after").write_text("2")  # the refused request renews the keys, then succeeds
        assert (m.path / "after").read_text() == "2"
        assert "renewing and retrying once" in m.log()
        assert psb.s3().get_object(Bucket=bucket, Key="after")["Body"].read() == b"2"
    finally:
        mounter.close()


def test_provider_down_then_back(psb: SandboxProcess, tmp_path: Path) -> None:
    """I/O goes on while the keys are valid, fails with EACCES (no hang) once they expire, and
    the mount recovers by itself when the provider answers again."""
    state = psb.state["cleverbase"]
    env = profile_env(psb, "cleverbase", tmp_path)
    mounter = Mounter(psb, tmp_path)
    try:
        m = mounter("", env=env, profile="p")
        (m.path / "a").write_text("a")
        expires = mount_status(m.path, m.env)["credentials_expire_at"]
        admin_call(state["admin_url"], state["admin_token"], "down")
        try:
            (m.path / "b").write_text("still valid keys")
            time.sleep(max(0.0, expires - time.time()) + 2)
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                (m.path / "c").write_text("expired keys")
            assert e.value.errno == errno.EACCES
            assert time.monotonic() - t0 < 60, "an expired-keys failure must not hang"
        finally:
            admin_call(state["admin_url"], state["admin_token"], "up")
        # The failed renewal is remembered for 5 s (failure_memory); after that, new keys.
        back = time.monotonic()
        while True:
            try:
                (m.path / "d").write_text("recovered")
                break
            except PermissionError:
                assert time.monotonic() - back < 5 + 2, "still EACCES after the provider is back"
                time.sleep(0.5)
        assert (m.path / "d").read_text() == "recovered"
        bucket = mount_status(m.path, m.env)["bucket"]
        assert psb.s3().get_object(Bucket=bucket, Key="b")["Body"].read() == b"still valid keys"
    finally:
        mounter.close()


def test_other_users_bucket_cannot_be_mounted(psb: SandboxProcess, tmp_path: Path) -> None:
    """A profile whose keys belong to alice cannot mount bob's bucket."""
    env = profile_env(psb, "clevercloud", tmp_path)
    bob = psb.state["clevercloud"]["users"]["bob"]["addons"][0]["buckets"][0]
    mp = tmp_path / "mp"
    mp.mkdir()
    r = subprocess.run([*S3MOUNT, "mount", f"s3://{bob}", str(mp), "-o", "profile=p"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "refused" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not os.path.ismount(mp)


def test_no_secrets_in_logs_or_ps(psb: SandboxProcess, tmp_path: Path) -> None:
    env = profile_env(psb, "cleverbase", tmp_path)
    secret = psb.state["cleverbase"]["client_secret"]
    tokens = (Path(env["XDG_CONFIG_HOME"]) / "s3mount" / "tokens" / "p.json").read_text()
    secrets_ = [secret, *[v for v in json.loads(tokens).values()
                          if isinstance(v, str) and len(v) > 20]]
    mounter = Mounter(psb, tmp_path)
    try:
        m = mounter("", "debug", env=env, profile="p")
        (m.path / "x").write_text("x")
        ps = run(["ps", "axww", "-o", "args"]).stdout
        st = run([*S3MOUNT, "status", "--json"], env=env).stdout
        log = m.log()
        assert "DEBUG" in log
        for s in secrets_:
            assert s not in log and s not in ps and s not in st
    finally:
        mounter.close()


def test_mount_from_a_terminal_logs_in_first(psb: SandboxProcess, tmp_path: Path) -> None:
    """No login stored yet: a mount started from a terminal runs the provider's login first
    (here the emulator's consent page, fetched over HTTP); without a terminal it refuses."""
    env = profile_env(psb, "cleverbase", tmp_path)
    tokens = Path(env["XDG_CONFIG_HOME"]) / "s3mount" / "tokens"
    for f in tokens.iterdir():
        f.unlink()
    mp = tmp_path / "mp"
    mp.mkdir()
    cmd = [*S3MOUNT, "mount", "p", str(mp)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "login" in r.stderr and not os.path.ismount(mp)
    r = subprocess.run(["script", "-qec", " ".join(cmd), "/dev/null"], env=env,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.path.ismount(mp)
        (mp / "f").write_text("after login")
        assert (mp / "f").read_text() == "after login"
    finally:
        subprocess.run([*S3MOUNT, "umount", str(mp)], env=env, capture_output=True, timeout=120)
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True, timeout=30)
