"""mount.s3mount: the translation from mount(8)'s calling convention, and what it refuses."""

from __future__ import annotations

import pytest

from s3mount import mounthelper
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


def test_bad_invocation_is_one_line(capsys, calls):
    assert main(["s3://bucket"]) == EX_USAGE
    err = capsys.readouterr().err
    assert err.startswith("mount.s3mount: ") and err.count("\n") == 1


def test_environment_is_completed(monkeypatch, calls, tmp_path):
    """mount(8) gives helpers no HOME and no PATH; profiles and fusermount3 need them."""
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("PATH", raising=False)
    assert main(["work", str(tmp_path)]) == 0
    import os
    import pwd
    assert os.environ["HOME"] == pwd.getpwuid(os.getuid()).pw_dir
    assert "/usr/bin" in os.environ["PATH"].split(":")


def test_mount_argv_ends_options():
    assert mount_argv("s3://b-1", "/m", []) == ["mount", "--", "s3://b-1", "/m"]
    assert mounthelper.check_source("s3://b-1/x/y.z") is None
