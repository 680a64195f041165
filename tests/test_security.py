"""Issue #6, security rules: each test fails if its rule is broken.

- config and token files must be private (0600, ours) or the CLI refuses them;
- TLS certificates are verified unless ``-o no_verify_ssl`` says otherwise (and that warns);
- other users cannot use a mount without ``allow_other``; with it, the kernel still checks modes;
- no secret in the log (even at debug), exceptions, ``ps``, ``/proc/PID/cmdline`` or ``status``;
- nothing a user passes as a source, profile or option can add an option to the FUSE mount;
- a crash of the mount writes no core (the process is not dumpable; in the background it works in /).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultlib import through
from mountlib import S3MOUNT, Mount, Mounter, run

from s3mount.mounthelper import EX_USAGE
from s3mount.mounthelper import main as mount_helper
from s3mount.sandbox.client import SandboxProcess
from s3mount.sandbox.faultproxy import Fault, FaultProxy

TEST_USER = "s3mount-test"
SECRET_WINDOW = 12
"""A leak is any run of this many characters of a secret (catches truncated or split values)."""

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root (other users, chown)")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*S3MOUNT, *args], capture_output=True, text=True, timeout=120, env=env)


def _refused(r: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one stderr line of a refusal, after checking it is one."""
    assert r.returncode != 0, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _mount_options(mp: Path) -> tuple[set[str], set[str]]:
    """(per-mount options, superblock options) of the mount at ``mp`` from mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(mp):
            sep = fields.index("-")
            return set(fields[5].split(",")), set(fields[sep + 3].split(","))
    raise AssertionError(f"{mp} is not mounted")


def _assert_confined(mp: Path, *, allow_other: bool = False) -> None:
    """No option we did not ask for: nosuid, nodev, default_permissions; allow_other as asked."""
    per_mount, sb = _mount_options(mp)
    assert {"nosuid", "nodev"} <= per_mount, per_mount
    assert "default_permissions" in sb, sb
    assert ("allow_other" in sb) == allow_other, sb


# -- config and token files ----------------------------------------------------------------------


@pytest.fixture
def xdg(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty config home and an environment pointing at it (no AWS_* variables)."""
    home = tmp_path / "config"
    (home / "s3mount").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(XDG_CONFIG_HOME=str(home), XDG_STATE_HOME=str(tmp_path / "state"),
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    return home / "s3mount", env


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def test_config_file_must_be_private(xdg: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    conf_dir, env = xdg
    config = conf_dir / "config.toml"
    _write_private(config, '[profiles.work]\nprovider = "static"\nbucket = "bkt"\n'
                           'access_key = "AKIDEXAMPLE"\nsecret_key = "very-secret-value"\n')
    # Private: read.
    r = _cli(["credentials", "work"], env)
    assert r.returncode == 0 and json.loads(r.stdout)["AccessKeyId"] == "AKIDEXAMPLE", r.stderr
    mp = tmp_path / "mp"
    mp.mkdir()
    for mode, args in ((0o644, ["credentials", "work"]), (0o604, ["mount", "work", str(mp)]),
                       (0o640, ["mount", "work", str(mp)])):
        config.chmod(mode)
        line = _refused(_cli(args, env), str(config), "chmod 600")
        assert "very-secret-value" not in line
        assert not os.path.ismount(mp)


@needs_root
def test_config_file_owned_by_another_user_is_refused(xdg: tuple[Path, dict[str, str]]) -> None:
    conf_dir, env = xdg
    config = conf_dir / "config.toml"
    _write_private(config, '[profiles.work]\nprovider = "static"\nbucket = "bkt"\n'
                           'access_key = "AK"\nsecret_key = "SK"\n')
    os.chown(config, 65534, 65534)
    _refused(_cli(["credentials", "work"], env), "owned by uid 65534")


def test_token_file_must_be_private(xdg: tuple[Path, dict[str, str]],
                                    sandbox: SandboxProcess) -> None:
    """An lc2 profile keeps its long-lived keys in the token store; the CLI reads them there."""
    conf_dir, env = xdg
    _write_private(conf_dir / "config.toml",
                   f'[profiles.work]\nprovider = "lc2"\nsts_url = "{sandbox.url}"\n'
                   f'endpoint_url = "{sandbox.url}"\nbucket = "bkt"\n')
    tokens = conf_dir / "tokens"
    tokens.mkdir(mode=0o700)
    token_file = tokens / "work.json"
    admin = sandbox.admin
    _write_private(token_file, json.dumps(
        {"lc2": {"access_key": admin.access_key, "secret_key": admin.secret_key}}))
    r = _cli(["credentials", "work"], env)
    assert r.returncode == 0 and json.loads(r.stdout)["SessionToken"], r.stderr
    token_file.chmod(0o644)
    line = _refused(_cli(["credentials", "work"], env), str(token_file), "chmod 600")
    assert admin.secret_key not in line
    token_file.chmod(0o600)
    tokens.chmod(0o755)
    _refused(_cli(["credentials", "work"], env), str(tokens), "chmod 700")
    if os.getuid() == 0:
        tokens.chmod(0o700)
        os.chown(token_file, 65534, 65534)
        _refused(_cli(["credentials", "work"], env), "owned by uid 65534")


# -- TLS -----------------------------------------------------------------------------------------


def test_tls_certificate_is_verified_by_default(mounter: Mounter, sandbox: SandboxProcess,
                                                bucket: str, s3, tls_front: FaultProxy,
                                                self_signed: tuple[str, str],
                                                tmp_path: Path) -> None:
    assert tls_front.url.startswith("https://127.0.0.1:")
    keys = sandbox.issue_keys([bucket])
    env = mounter.env_for(keys)
    mp = tmp_path / "mp"
    mp.mkdir()
    line = _refused(_cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", tls_front.url],
                         env), "certificate", tls_front.url, "no_verify_ssl")
    assert not os.path.ismount(mp), line
    tls = through(mounter, sandbox, tls_front.url)
    # Verified against a CA the user names (the standard AWS_CA_BUNDLE): mounts.
    m = tls(bucket, keys=keys, env=dict(env, AWS_CA_BUNDLE=self_signed[0]))
    (m.path / "verified").write_bytes(b"over verified TLS")
    assert s3.get_object(Bucket=bucket, Key="verified")["Body"].read() == b"over verified TLS"
    # TLS protects bodies in transit, so no request's body is signed (no SHA-256 of every byte
    # on either side): a small file's PUT, a big one's parts. Both arrive intact.
    big = os.urandom(20 * 1024 * 1024 + 7)
    (m.path / "big").write_bytes(big)
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    stats = tls_front.stats()
    assert stats["requests"] >= 7 and stats.get("unsigned_payload") == stats["requests"], stats
    # -o no_verify_ssl gets past TLS (here: all the way), and says so in the log, once.
    m = tls(bucket, "no_verify_ssl", keys=keys, cache_dir=tmp_path / "cache2")
    (m.path / "unverified").write_bytes(b"over unverified TLS")
    assert s3.get_object(Bucket=bucket, Key="unverified")["Body"].read() == b"over unverified TLS"
    log = m.log()
    assert log.count("TLS certificate verification is OFF") == 1, log
    assert "InsecureRequestWarning" not in log, log
    _assert_confined(m.path)


# -- other users ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_user() -> pwd.struct_passwd:
    """An ordinary user without a home or shell, created once if missing (and then kept)."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(TEST_USER)
    # Parallel workers may race to create it: whoever loses finds it made.
    r = run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             TEST_USER], check=False)
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        raise AssertionError(f"useradd {TEST_USER} failed: {r.stderr}") from None


def _as_user(user: pwd.struct_passwd, *cmd: str) -> subprocess.CompletedProcess[str]:
    return run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                "--", *cmd], check=False, timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C"})


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users may traverse (pytest's tmp_path is 0700), for mountpoints.

    Requested before ``mounter`` so it is removed after the mounts are gone; only empty
    directories that are not mount points are removed.
    """
    d = Path(tempfile.mkdtemp(prefix="s3mount-sec-"))
    d.chmod(0o755)
    yield d
    for p in d.iterdir():
        if not os.path.ismount(p):
            with contextlib.suppress(OSError):
                p.rmdir()
    with contextlib.suppress(OSError):
        d.rmdir()


@needs_root
def test_other_users_are_kept_out(public_dir: Path, mounter: Mounter, bucket: str,
                                  other_user: pwd.struct_passwd) -> None:
    m = mounter(bucket, path=public_dir / "private")
    _assert_confined(m.path)
    (m.path / "public.txt").write_text("for everyone\n")
    os.chmod(m.path / "public.txt", 0o644)
    # Without allow_other the kernel refuses every other user, whatever the modes say.
    r = _as_user(other_user, "stat", str(m.path / "public.txt"))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r
    r = _as_user(other_user, "ls", str(m.path))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r


@needs_root
def test_allow_other_still_checks_permissions(public_dir: Path, mounter: Mounter, bucket: str,
                                              other_user: pwd.struct_passwd) -> None:
    m = mounter(bucket, "allow_other", path=public_dir / "shared")
    _assert_confined(m.path, allow_other=True)
    fd = os.open(m.path / "secret.txt", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"root only\n")
    os.close(fd)
    (m.path / "public.txt").write_text("for everyone\n")
    os.chmod(m.path / "public.txt", 0o644)
    st = os.stat(m.path / "secret.txt")
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    r = _as_user(other_user, "cat", str(m.path / "public.txt"))
    assert r.returncode == 0 and r.stdout == "for everyone\n", r  # the user does get in...
    r = _as_user(other_user, "cat", str(m.path / "secret.txt"))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r  # ...but not past 0600
    r = _as_user(other_user, "sh", "-c", f"echo x > {m.path / 'intruder.txt'}")
    assert r.returncode != 0 and "Permission denied" in r.stderr, r  # root's 0755 directory
    assert not (m.path / "intruder.txt").exists()


@needs_root
def test_cache_directory_of_another_user_is_refused(mounter: Mounter, sandbox: SandboxProcess,
                                                    bucket: str, tmp_path: Path) -> None:
    """With ``-o cache_dir`` in a shared place (``/tmp/...``), another user could create the
    mount's cache directory first and read staged data or plant files for crash recovery to
    upload into this user's bucket: like the runtime directory, it must be ours and private."""
    cache = tmp_path / "shared-cache"
    m = mounter(bucket, cache_dir=cache)
    m.unmount()
    (mine,) = [p for p in cache.iterdir() if p.is_dir()]  # the mount's own directory in it
    for p in [mine, *mine.rglob("*")]:
        os.chown(p, 65534, 65534)
    mine.chmod(0o777)
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    mp = tmp_path / "mp"
    mp.mkdir()
    mounter.mounts.append(Mount(mp, bucket, env, [], cache, tmp_path / "second.log"))
    r = _cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url, "-o",
              f"cache_dir={cache},log_file={tmp_path / 'second.log'}"], env)
    _refused(r, str(mine))


# -- secrets -------------------------------------------------------------------------------------


def _leaks(text: str, *secrets: str) -> list[str]:
    """The secrets (shown by their length only) of which ``text`` holds any SECRET_WINDOW run."""
    found = []
    for s in secrets:
        if any(s[i:i + SECRET_WINDOW] in text for i in range(len(s) - SECRET_WINDOW + 1)):
            found.append(f"a {len(s)}-character secret")
    return found


def _status_json(m: Mount) -> str:
    """``s3mount status --json`` once it lists ``m`` (the mount publishes right after start)."""
    deadline = time.monotonic() + 30
    while True:
        r = _cli(["status", "--json"], m.env)
        if str(m.path) in r.stdout or time.monotonic() > deadline:
            assert r.returncode == 0 and str(m.path) in r.stdout, r
            return r.stdout
        time.sleep(0.2)


def test_no_secret_in_logs_ps_status_or_errors(mounter: Mounter, sandbox: SandboxProcess,
                                               bucket: str, s3, tmp_path: Path) -> None:
    keys = sandbox.issue_keys([bucket], lifetime=3600)
    assert keys.session_token
    secrets = (keys.secret_key, keys.session_token)
    s3.put_object(Bucket=bucket, Key="pre/x.txt", Body=b"not read before the server goes down")
    with FaultProxy(sandbox.url) as proxy:
        m = through(mounter, sandbox, proxy.url)(bucket, "debug", "timeout=5", keys=keys)
        # Ordinary I/O, plus the error paths: retried 503s and drops, then a dead server.
        proxy.set_faults([Fault("slowdown", count=3, spare_last_attempt=True),
                          Fault("drop", count=2, spare_last_attempt=True)])
        (m.path / "dir").mkdir()
        (m.path / "dir" / "a.txt").write_text("hello\n")
        os.rename(m.path / "dir" / "a.txt", m.path / "dir" / "b.txt")
        assert (m.path / "dir" / "b.txt").read_text() == "hello\n"
        assert os.listdir(m.path / "dir") == ["b.txt"]
        proxy.set_down(True)
        with pytest.raises(OSError) as e:
            (m.path / "pre" / "x.txt").read_bytes()
        assert e.value.errno == errno.EIO
        proxy.set_down(False)
        os.unlink(m.path / "dir" / "b.txt")
        assert proxy.stats()["slowdown"] == 3
        status = _status_json(m)
        assert m.pid is not None
        cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        ps = run(["ps", "axww", "-o", "args"]).stdout
        assert str(m.path) in cmdline and str(m.path) in ps
        m.unmount()
    log = m.log()
    assert " DEBUG " in log and (" ERROR " in log or " WARNING " in log), log[-2000:]
    for where, text in (("log", log), ("status --json", status), ("cmdline", cmdline),
                        ("ps", ps)):
        leaks = _leaks(text, *secrets)
        assert not leaks, f"{leaks} in {where}"
    # Nor in anything the mount left on disk (staging records, attribute cache, runtime files).
    for root in (m.cache_dir, mounter.state_dir):
        for path in root.rglob("*"):
            if path.is_file():
                leaks = _leaks(path.read_bytes().decode("latin-1"), *secrets)
                assert not leaks, f"{leaks} in {path}"
    # Refused keys: the one-line error names the problem, not the key.
    bad = dict(mounter.env_for(keys), AWS_SECRET_ACCESS_KEY=keys.secret_key[::-1])
    mp = tmp_path / "refused"
    mp.mkdir()
    line = _refused(_cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", sandbox.url],
                         bad), "refused")
    leaks = _leaks(line, *secrets, keys.secret_key[::-1])
    assert not leaks, leaks


def test_file_contents_stay_out_of_the_debug_log(mounter: Mounter, sandbox: SandboxProcess,
                                                 bucket: str) -> None:
    """A file can hold a secret too (a copied credentials file): its bytes are not log lines."""
    keys = sandbox.issue_keys([bucket], lifetime=3600)
    assert keys.session_token
    m = mounter(bucket, "debug", keys=keys)
    (m.path / "credentials").write_text(f"aws_session_token = {keys.session_token[:200]}\n")
    m.unmount()
    leaks = _leaks(m.log(), keys.session_token[:200])
    assert not leaks, leaks


# -- option injection ----------------------------------------------------------------------------


def test_comma_lists_are_options_of_our_own(mounter: Mounter, bucket: str,
                                            tmp_path: Path) -> None:
    """``cache_dir=X,allow_other`` is two of our options; ``X,dev`` / ``X,suid`` cannot turn
    the kernel's nodev/nosuid off (mount(8)'s generic options are ignored, never passed on)."""
    cache = tmp_path / "own-cache"
    m = mounter(bucket, f"cache_dir={cache},allow_other", cache_dir=cache)
    assert any(cache.iterdir())  # the first option, with the value up to the comma
    _assert_confined(m.path, allow_other=True)  # the second, as our own option
    m2 = mounter(bucket, f"log_file={tmp_path / 'm.log'},dev,suid,exec")
    _assert_confined(m2.path)


def test_values_cannot_carry_options(mounter: Mounter, sandbox: SandboxProcess, bucket: str,
                                     tmp_path: Path) -> None:
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    mp = tmp_path / "mp"
    mp.mkdir()
    base = ["--endpoint-url", sandbox.url]
    # (More spellings, without starting a process each: test_mounthelper.py.)
    for opts in ("region=us-east-1,allow_other=1", "fsname=x", "x-foo=1\nallow_other"):
        _refused(_cli(["mount", f"s3://{bucket}", str(mp), *base, "-o", opts], env))
        assert not os.path.ismount(mp)
    for source in (f"s3://{bucket},allow_other", "-o allow_other", "work,allow_other"):
        _refused(_cli(["mount", *base, "--", source, str(mp)], env), "bad source")
        assert not os.path.ismount(mp)


@pytest.mark.parametrize("opts", ["x-foo=1\nallow_other", "x-systemd.requires=a\0allow_other",
                                  "nofail,comment=\rallow_other"])
def test_mount_helper_refuses_control_characters(opts: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # -f: check only. Ignored options (x-*, comment=) are checked too.
    assert mount_helper(["s3://bucket", str(tmp_path), "-f", "-o", opts]) == EX_USAGE
    err = capsys.readouterr().err
    assert err.startswith("mount.s3mount: ") and err.count("\n") == 1, err


def test_profile_cannot_inject_options(xdg: tuple[Path, dict[str, str]], mounter: Mounter,
                                       sandbox: SandboxProcess, bucket: str,
                                       tmp_path: Path) -> None:
    conf_dir, env = xdg
    keys = sandbox.issue_keys([bucket])
    profile = (f'provider = "static"\nendpoint_url = "{sandbox.url}"\n'
               f'access_key = "{keys.access_key}"\nsecret_key = "{keys.secret_key}"\n')
    config = conf_dir / "config.toml"
    mp = tmp_path / "mp"
    mp.mkdir()
    _write_private(config, f'[profiles.work]\nbucket = "{bucket},allow_other"\n{profile}')
    _refused(_cli(["mount", "work", str(mp)], env), "bucket")
    _write_private(config, f'[profiles.work]\nbucket = "{bucket}"\noptions = "allow_other=1"\n'
                           f'{profile}')
    _refused(_cli(["mount", "work", str(mp)], env), "allow_other")
    assert not os.path.ismount(mp)
    # The same profile with clean values mounts, confined.
    _write_private(config, f'[profiles.work]\nbucket = "{bucket}"\n{profile}')
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    log_file = tmp_path / "work.log"
    # Handed to the mounter fixture, whose teardown unmounts it whatever happens below.
    mounter.mounts.append(Mount(mp, bucket, env, [], tmp_path / "cache", log_file))
    r = _cli(["mount", "work", str(mp), "-o", f"log_file={log_file}"], env)
    assert r.returncode == 0, r.stderr
    _assert_confined(mp)


@contextlib.contextmanager
def _core_dumps_on() -> Iterator[None]:
    """Core dumps enabled for the processes started meanwhile (they inherit the limit)."""
    old = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (old[1], old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, old)


def _crash(pid: int, mountpoint: Path) -> None:
    """SIGSEGV the mount process (a crash that dumps core), then detach its dead mount."""
    os.kill(pid, signal.SIGSEGV)
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, timeout=30)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a core is written before the process becomes one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _cores(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith("core")]


@pytest.mark.skipif(not os.path.basename(
    Path("/proc/sys/kernel/core_pattern").read_text().strip()).startswith("core"),
    reason="core dumps go to a crash handler, not to the working directory")
def test_background_mount_leaves_its_directory_and_dumps_no_core(
        mounter: Mounter, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.10: a crash wrote a core holding the secret key into the directory the mount was
    started from. The daemon works in / and is not dumpable."""
    start = tmp_path / "started-here"
    start.mkdir()
    monkeypatch.chdir(start)
    root_core = Path("/core")
    before = root_core.stat().st_mtime if root_core.exists() else None
    with _core_dumps_on():
        m = mounter(bucket, cache_dir=Path("cache"))  # relative: made absolute before chdir
    assert m.pid is not None
    assert os.readlink(f"/proc/{m.pid}/cwd") == "/"
    (m.path / "f").write_text("x")
    assert (start / "cache").is_dir()  # the cache is where the user meant it
    _crash(m.pid, m.path)
    assert _cores(start) == []
    assert (root_core.stat().st_mtime if root_core.exists() else None) == before


@pytest.mark.skipif(not os.path.basename(
    Path("/proc/sys/kernel/core_pattern").read_text().strip()).startswith("core"),
    reason="core dumps go to a crash handler, not to the working directory")
def test_foreground_mount_dumps_no_core(mounter: Mounter, sandbox: SandboxProcess, bucket: str,
                                        tmp_path: Path) -> None:
    start = tmp_path / "started-here"
    start.mkdir()
    mp = tmp_path / "fg"
    mp.mkdir()
    env = mounter.env_for(sandbox.issue_keys([bucket]))
    with _core_dumps_on():
        proc = subprocess.Popen(
            [*S3MOUNT, "mount", f"s3://{bucket}", str(mp), "-f", "--endpoint-url", sandbox.url,
             "-o", f"cache_dir={tmp_path / 'cache'}"], cwd=start, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mp):
            assert proc.poll() is None and time.monotonic() < deadline, "no mount"
            time.sleep(0.1)
        assert os.readlink(f"/proc/{proc.pid}/cwd") == str(start)  # foreground stays
        _crash(proc.pid, mp)
        assert proc.wait(30) == -signal.SIGSEGV
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True, timeout=30)
    assert _cores(start) == []


def test_cache_root_others_can_read_is_refused(mounter: Mounter, bucket: str) -> None:
    """Staged data and recovery records are trusted only in a directory of ours alone: one that
    others may read or write refuses the mount in one line (nothing from it is uploaded)."""
    m = mounter(bucket)
    m.unmount()
    (root,) = [p for p in mounter.cache_dir.iterdir() if p.is_dir()]
    root.chmod(0o755)
    with pytest.raises(AssertionError, match="is not private to you"):
        mounter(bucket)
    root.chmod(0o700)
    mounter(bucket).unmount()
