"""``s3mount status``: table, JSON, and the error for a path that is not an s3mount mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from s3mount import runtime
from s3mount.cli import status

HOUR = 3600


@pytest.fixture
def live(tmp_path, monkeypatch):
    """Publish entries into a private runtime dir; their mountpoints count as mounted."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setattr(runtime.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(runtime, "_owned_dir",
                        lambda p, real=runtime._owned_dir: not p.startswith("/run/") and real(p))
    mounted: set[str] = set()
    monkeypatch.setattr(runtime, "mounted_paths", lambda: mounted)
    # fuse.s3mount mounts of ours: the live ones plus those added with add(..., dead=True)
    monkeypatch.setattr(runtime, "our_fuse_mounts", lambda: sorted(mounted))

    def add(name: str, dead: bool = False, **state):
        mp = str(tmp_path / name)
        mounted.add(mp)
        if not dead:
            runtime.publish(mp, state)
        return mp
    return add


def run_status(capsys, *argv: str) -> tuple[int, str, str]:
    from s3mount.cli import main

    rc = main(["status", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


STATE = dict(profile="work", provider="cleverbase", bucket="photos", prefix="2024/",
             endpoint="https://s3.example.net", renewals=3, pending_uploads=2, failed_uploads=0,
             cache_bytes=3 * 1024 * 1024, next_renewal_at=None, started_at=0, last_error=None)


def test_json_lists_every_live_mount(live, capsys):
    expire = time.time() + HOUR
    a = live("a", credentials_expire_at=expire, **STATE)
    b = live("b", credentials_expire_at=None, **{**STATE, "provider": "static", "profile": None})
    rc, out, err = run_status(capsys, "--json")
    assert rc == 0 and err == ""
    entries = json.loads(out)
    assert [e["mountpoint"] for e in entries] == [a, b]
    for key in ("mountpoint", "provider", "bucket", "endpoint", "credentials_expire_at",
                "renewals", "pending_uploads"):
        assert all(key in e for e in entries)
    assert entries[0]["credentials_expire_at"] == expire
    assert entries[1]["provider"] == "static"


def test_table(live, capsys):
    mp = live("a", credentials_expire_at=time.time() + 2 * HOUR + 600,
              **{**STATE, "last_error": "upload of x failed: AccessDenied"})
    rc, out, _ = run_status(capsys)
    assert rc == 0
    header, row, error = out.splitlines()
    assert header.split() == list(status.COLUMNS)
    assert row.startswith(mp)
    for part in ("cleverbase (work)", "photos/2024", "https://s3.example.net", "expire in 2h",
                 "3.0MiB"):
        assert part in row
    assert error == f"{mp}: last error: upload of x failed: AccessDenied"


def test_expiry_wording():
    now = 1000.0
    assert status._expiry(None, now) == "no expiry"
    assert status._expiry(now + 90, now) == "expire in 90s"
    assert status._expiry(now + 600, now) == "expire in 10m"
    assert status._expiry(now - 30, now) == "expired 30s ago"


def test_named_mountpoint(live, capsys, tmp_path):
    live("a", **STATE)
    b = live("b", **{**STATE, "bucket": "other"})
    rc, out, _ = run_status(capsys, "--json", b + "/")
    assert rc == 0 and [e["bucket"] for e in json.loads(out)] == ["other"]


def test_not_an_s3mount_mount(live, capsys, tmp_path):
    live("a", **STATE)
    rc, out, err = run_status(capsys, str(tmp_path))
    assert rc == 1 and out == ""
    assert err == f"s3mount: {tmp_path} is not an s3mount mount\n"


def test_no_mounts(live, capsys):
    assert run_status(capsys) == (0, "no s3mount mounts\n", "")
    assert run_status(capsys, "--json") == (0, "[]\n", "")


def test_mount_without_a_live_process_is_pointed_out(live, capsys):
    a = live("a", **STATE)
    crashed = live("crashed", dead=True)
    rc, out, err = run_status(capsys)
    assert rc == 0 and out.splitlines()[1].startswith(a)
    assert err == (f"{crashed} is mounted but no s3mount process reports for it (crashed, or "
                   f"still starting); if it stays so, detach it: fusermount3 -uz {crashed}\n")
    rc, out, err = run_status(capsys, "--json")
    assert [e["mountpoint"] for e in json.loads(out)] == [a] and crashed in err
    rc, out, err = run_status(capsys, crashed)
    assert rc == 1 and out == "" and err.count("\n") == 1 and "fusermount3 -uz" in err


def test_only_our_s3mount_mounts_count(tmp_path):
    info = tmp_path / "mountinfo"
    uid = os.getuid()
    info.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
        f"90 22 0:50 / /mnt/our\\040s rw,nosuid - fuse.s3mount s3mount:b rw,user_id={uid},"
        "group_id=0\n"
        "91 22 0:51 / /mnt/theirs rw,nosuid - fuse.s3mount s3mount:b rw,user_id=4242,"
        "group_id=0\n"
        f"92 22 0:52 / /mnt/sshfs rw,nosuid - fuse.sshfs host: rw,user_id={uid},group_id=0\n")
    assert runtime.our_fuse_mounts(str(info)) == ["/mnt/our s"]


def test_status_command_line(tmp_path):
    """Through the installed entry point, in a clean runtime dir: nothing mounted, exit 0."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    r = subprocess.run([sys.executable, "-m", "s3mount", "status", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == f"s3mount: {tmp_path} is not an s3mount mount\n"


@pytest.mark.parametrize("argv", [["status", "--json"], ["umount", "/nowhere"]])
def test_status_and_umount_start_without_the_mount_machinery(argv, tmp_path) -> None:
    # Scripts and unit files call these often: they must not import boto3, trio or pyfuse3.
    code = ("import sys\nfrom s3mount.cli import main\nmain(sys.argv[1:])\n"
            "print([m for m in ('boto3', 'botocore', 'trio', 'pyfuse3') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path)))
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr


def test_table_shows_each_pending_upload_and_detached_mounts(live, capsys):
    uploads = [{"path": "big.iso", "stored": 100 * 1024 * 1024, "total": 400 * 1024 * 1024,
                "rate": 5 * 1024 * 1024, "open": False},
               {"path": "log.txt", "stored": 0, "total": 2048, "rate": None, "open": True}]
    mp = live("a", credentials_expire_at=None, uploads=uploads, detached=True,
              **{**STATE, "pending_uploads": 2})
    rc, out, _ = run_status(capsys)
    assert rc == 0
    _, row, big, log = out.splitlines()
    assert row.startswith(f"{mp} (detached)")
    assert big == f"{mp}: uploading big.iso: 100.0MiB of 400.0MiB (25%), 5.0MiB/s"
    assert log == f"{mp}: being written log.txt: 0B of 2.0KiB (0%)"
    rc, out, _ = run_status(capsys, "--json")
    (entry,) = json.loads(out)
    assert entry["uploads"] == uploads and entry["detached"] is True
