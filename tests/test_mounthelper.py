"""mount.s3mount: the translation from mount(8)'s calling convention, and what it refuses."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mountlib import mount_status

from s3mount import mounthelper
from s3mount.install import Targets, install
from s3mount.mounthelper import EX_FAIL, EX_USAGE, main, mount_argv, translate_options


@pytest.fixture
def calls(monkeypatch):
    """Record what would be handed to ``s3mount`` instead of mounting."""
    seen: list[list[str]] = []

    def fake_cli(argv):
        seen.append(argv)
        return 0
    monkeypatch.setattr("s3mount.cli.main", fake_cli)
    return seen


def test_generic_options_are_dropped_and_ours_kept():
    opts = translate_options(
        ["rw,noexec,nosuid,nodev,endpoint_url=http://127.0.0.1:9/,_netdev,nofail,user",
         "x-systemd.automount,x-systemd.idle-timeout=60,uid=1000,comment=foo"], sloppy=False)
    assert opts == ["rw", "endpoint_url=http://127.0.0.1:9/", "uid=1000"]


def test_unknown_option_is_refused(capsys, calls, tmp_path):
    rc = main(["s3://bucket", str(tmp_path), "-o", "rw,allow_others"])
    assert rc == EX_USAGE and calls == []
    err = capsys.readouterr().err
    assert err == ("mount.s3mount: unknown mount option 'allow_others' "
                   "(see s3mount(1), MOUNT OPTIONS)\n")


def test_sloppy_drops_unknown_options_with_a_warning(capsys, calls, tmp_path):
    assert main(["s3://bucket", str(tmp_path), "-s", "-o", "ro,fsname=x,uid=0"]) == 0
    assert calls == [["mount", "-o", "ro,uid=0", "--", "s3://bucket", str(tmp_path)]]
    assert "ignoring unknown mount option 'fsname'" in capsys.readouterr().err


def test_bad_value_is_refused_before_mounting(capsys, calls, tmp_path):
    assert main(["s3://bucket", str(tmp_path), "-o", "uid=alice"]) == EX_USAGE
    assert calls == []
    assert capsys.readouterr().err == ("mount.s3mount: option 'uid': 'alice' is not a valid "
                                       "int\n")


def test_translation(calls, tmp_path):
    mp = str(tmp_path)
    assert main(["s3://my-bucket/some/prefix", mp, "-n", "-o",
                 "rw,nosuid,nodev,endpoint_url=http://127.0.0.1:9000,cache_size=100",
                 "-t", "s3mount"]) == 0
    assert calls == [["mount", "-o", "rw,endpoint_url=http://127.0.0.1:9000,cache_size=100",
                      "--", "s3://my-bucket/some/prefix", mp]]


def test_profile_source_without_options(calls, tmp_path):
    assert main(["work", str(tmp_path)]) == 0
    assert calls == [["mount", "--", "work", str(tmp_path)]]


def test_fake_mount_checks_but_does_not_mount(capsys, calls, tmp_path):
    assert main(["s3://bucket", str(tmp_path), "-f", "-v", "-o", "ro"]) == 0
    assert calls == []
    assert capsys.readouterr().err == (f"mount.s3mount: running s3mount mount -o ro -- "
                                       f"s3://bucket {tmp_path}\n")
    assert main(["s3://bucket", str(tmp_path), "-f", "-o", "bogus"]) == EX_USAGE


def test_failed_mount_exits_32(monkeypatch, tmp_path):
    monkeypatch.setattr("s3mount.cli.main", lambda argv: 1)
    assert main(["s3://bucket", str(tmp_path)]) == EX_FAIL


@pytest.mark.parametrize("source", [
    "s3://bucket,allow_other",           # would start a new FUSE option in fsname=
    "s3://bucket/pre,fix",
    "s3://bucket/a\\,allow_other",
    "s3://bucket/with space",
    "s3://bucket/new\nline",
    "s3://bucket/caf\u00e9",               # not ASCII: pyfuse3 encodes options as ASCII
    "s3://Bucket",
    "s3://b",
    "--endpoint-url=http://evil",
    "-f",
    "work\n",
    "prof ile",
    "",
])
def test_bad_sources_are_refused(source, capsys, calls, tmp_path):
    assert main([source, str(tmp_path)] if not source.startswith("-")
                else ["--", source, str(tmp_path)]) == EX_USAGE
    assert calls == []
    err = capsys.readouterr().err
    assert err.startswith("mount.s3mount: ") and err.count("\n") == 1


@pytest.mark.parametrize("value", ["endpoint_url=http://x/\nallow_other", "cache_dir=/tmp/\0x"])
def test_values_cannot_smuggle_lines(value, calls, tmp_path):
    assert main(["s3://bucket", str(tmp_path), "-o", value]) == EX_USAGE
    assert calls == []


def test_option_values_stay_one_argument(calls, tmp_path):
    """A value with spaces or shell syntax is one -o item, validated, never seen by a shell."""
    assert main(["s3://bucket", str(tmp_path), "-o", "cache_dir=/tmp/a b;$(id) -o allow_other"]) == 0
    assert calls[0][:3] == ["mount", "-o", "cache_dir=/tmp/a b;$(id) -o allow_other"]
    assert calls[0][3] == "--"


def test_missing_mountpoint(capsys, calls, tmp_path):
    assert main(["s3://bucket", str(tmp_path / "nope")]) == EX_USAGE
    assert capsys.readouterr().err == (f"mount.s3mount: mountpoint {tmp_path / 'nope'} is not a "
                                       "directory\n")


def test_namespace_is_refused(capsys, calls, tmp_path):
    assert main(["s3://bucket", str(tmp_path), "-N", "/proc/1/ns/mnt"]) == EX_USAGE
    assert "namespace" in capsys.readouterr().err


def test_setuid_start_is_refused(monkeypatch, capsys, calls, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert main(["s3://bucket", str(tmp_path)]) == EX_USAGE
    assert calls == [] and "refusing to run setuid" in capsys.readouterr().err


def test_bad_invocation_is_one_line(capsys, calls):
    assert main(["s3://bucket"]) == EX_USAGE
    err = capsys.readouterr().err
    assert err.startswith("mount.s3mount: ") and err.count("\n") == 1


def test_environment_is_completed(monkeypatch, calls, tmp_path):
    """mount(8) gives helpers no HOME and no PATH; profiles and fusermount3 need them."""
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("PATH", raising=False)
    assert main(["work", str(tmp_path)]) == 0
    import pwd
    assert os.environ["HOME"] == pwd.getpwuid(os.getuid()).pw_dir
    assert "/usr/bin" in os.environ["PATH"].split(":")


def test_mount_argv_ends_options():
    assert mount_argv("s3://b-1", "/m", []) == ["mount", "--", "s3://b-1", "/m"]
    assert mounthelper.check_source("s3://b-1/x/y.z") is None


# -- through mount(8), mount.fuse3 and fstab, for real (root only) --------------------------------

needs_root = pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/dev/fuse")
                                or shutil.which("mount.fuse3") is None,
                                reason="needs root, /dev/fuse and mount.fuse3")
FSTAB = Path("/etc/fstab")
FSTAB_LOCK = "/run/lock/s3mount-tests-fstab.lock"


@pytest.fixture(scope="module")
def helpers_installed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """/sbin/mount.s3mount and /usr/local/bin/s3mount, as the README set-up leaves them.

    Installed when missing and deliberately left in place: parallel test workers share them, and
    the result is exactly what ``s3mount install-helpers`` produces anyway.
    """
    install(Targets(unit_dir=str(tmp_path_factory.mktemp("units"))))


@pytest.fixture
def aws_env(sandbox, bucket) -> dict[str, str]:
    """Keys for ``bucket`` in the environment (mount(8) passes AWS_* through to the helper)."""
    keys = sandbox.issue_keys([bucket])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=keys.access_key, AWS_SECRET_ACCESS_KEY=keys.secret_key)
    if keys.session_token:
        env["AWS_SESSION_TOKEN"] = keys.session_token
    return env


@pytest.fixture
def mountpoint(tmp_path) -> Iterator[Path]:
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    _force_unmount(mp)


def _force_unmount(mp: Path) -> None:
    for cmd in ([sys.executable, "-m", "s3mount", "umount", str(mp)], ["fusermount3", "-u", str(mp)],
                ["fusermount3", "-uz", str(mp)]):
        if not os.path.ismount(mp):
            return
        subprocess.run(cmd, capture_output=True, timeout=60)


def _mountinfo(mp: Path) -> tuple[str, str, str]:
    """(fstype, source, super options) of the mount at ``mp``."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(mp):
            fstype, source, opts = fields[fields.index("-") + 1:][:3]
            return fstype, source, opts
    raise AssertionError(f"{mp} is not in mountinfo")


def _use_and_unmount(mp: Path, s3, bucket: str) -> None:
    """Write through the mount, see it in the bucket, unmount with umount(8), see the daemon go."""
    (mp / "hello.txt").write_text("hello from mount(8)\n")
    body = s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read()
    assert body == b"hello from mount(8)\n"
    entry = mount_status(mp)
    assert entry["bucket"] == bucket and entry["mountpoint"] == str(mp)
    assert _mountinfo(mp)[:2] == ("fuse.s3mount", f"s3://{bucket}")
    r = subprocess.run(["umount", str(mp)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(mp)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{entry['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    stat_line = Path(f"/proc/{entry['pid']}/stat")
    assert not stat_line.exists() or stat_line.read_text().split(") ", 1)[1][0] == "Z"


@needs_root
@pytest.mark.parametrize("fstype", ["s3mount", "fuse.s3mount"])
def test_mount_t(fstype, helpers_installed, sandbox, bucket, s3, aws_env, mountpoint):
    r = subprocess.run(["mount", "-t", fstype, f"s3://{bucket}", str(mountpoint), "-o",
                        f"endpoint_url={sandbox.url},nosuid,nodev"],
                       env=aws_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _use_and_unmount(mountpoint, s3, bucket)


@needs_root
@pytest.mark.parametrize("fstype", ["s3mount", "fuse.s3mount"])
def test_fstab_entry(fstype, helpers_installed, sandbox, bucket, s3, aws_env, mountpoint):
    line = (f"s3://{bucket} {mountpoint} {fstype} "
            f"endpoint_url={sandbox.url},noauto,_netdev,nofail,x-systemd.automount 0 0"
            f"  # s3mount-test {os.getpid()}\n")
    with _fstab_line(line):
        r = subprocess.run(["mount", str(mountpoint)], env=aws_env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _use_and_unmount(mountpoint, s3, bucket)


@needs_root
@pytest.mark.parametrize("fstype", ["s3mount", "fuse.s3mount"])
def test_unknown_option_fails_before_mounting(fstype, helpers_installed, bucket, aws_env,
                                              mountpoint, sandbox):
    r = subprocess.run(["mount", "-t", fstype, f"s3://{bucket}", str(mountpoint), "-o",
                        f"endpoint_url={sandbox.url},alow_other"],
                       env=aws_env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "unknown mount option 'alow_other'" in r.stderr
    assert not os.path.ismount(mountpoint)


@needs_root
@pytest.mark.parametrize("fstype", ["s3mount", "fuse.s3mount"])
def test_source_cannot_inject_fuse_options(fstype, helpers_installed, bucket, aws_env,
                                           mountpoint, sandbox):
    r = subprocess.run(["mount", "-t", fstype, f"s3://{bucket},allow_other", str(mountpoint),
                        "-o", f"endpoint_url={sandbox.url}"],
                       env=aws_env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert not os.path.ismount(mountpoint)


@contextlib.contextmanager
def _fstab_line(line: str) -> Iterator[None]:
    """Append ``line`` to /etc/fstab and always take it out again (edited in place, locked)."""
    with open(FSTAB_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(FSTAB, "a") as f:
            f.write(line)
    try:
        yield
    finally:
        with open(FSTAB_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = FSTAB.read_text()
            with open(FSTAB, "r+") as f:
                f.write(text.replace(line, ""))
                f.truncate()
