"""Runtime state entries: private directory, atomic 0600 files, stale-entry cleanup."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from s3mount import runtime


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR; /run/user/<uid> and /tmp are redirected into tmp_path too."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setattr(runtime.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    real_owned = runtime._owned_dir
    monkeypatch.setattr(runtime, "_owned_dir",
                        lambda p: not p.startswith("/run/user/") and real_owned(p))
    return xdg / "s3mount"


@pytest.fixture
def mounted(monkeypatch):
    """Pretend these paths are mountpoints (the real check reads /proc/self/mountinfo)."""
    paths: set[str] = set()
    monkeypatch.setattr(runtime, "mounted_paths", lambda: paths)
    return paths


def test_publish_creates_private_dir_and_file(rundir, mounted, tmp_path):
    mp = str(tmp_path / "mnt")
    mounted.add(mp)
    runtime.publish(mp, {"provider": "cleverbase", "bucket": "b", "renewals": 2})
    assert stat.S_IMODE(os.stat(rundir).st_mode) == 0o700
    (entry,) = [p for p in rundir.iterdir()]
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert len(entry.stem) == 16 and entry.suffix == ".json"
    state = json.loads(entry.read_text())
    assert state["mountpoint"] == mp and state["pid"] == os.getpid()
    assert runtime.read_all() == [state]
    assert runtime.find(mp + "/") == state


def test_republish_replaces_and_leaves_no_temp_files(rundir, mounted, tmp_path):
    mp = str(tmp_path / "mnt")
    mounted.add(mp)
    for n in range(5):
        runtime.publish(mp, {"renewals": n})
    assert len(list(rundir.iterdir())) == 1
    assert runtime.read_all()[0]["renewals"] == 4


def test_unknown_keys_are_refused(rundir, tmp_path):
    with pytest.raises(ValueError, match="secret_key"):
        runtime.publish(str(tmp_path), {"secret_key": "x"})
    assert not rundir.exists() or not list(rundir.iterdir())


def test_withdraw(rundir, mounted, tmp_path):
    mp = str(tmp_path / "mnt")
    mounted.add(mp)
    runtime.publish(mp, {})
    runtime.withdraw(mp)
    runtime.withdraw(mp)  # twice is fine
    assert runtime.read_all() == []


def test_entry_of_dead_process_is_removed(rundir, mounted, tmp_path):
    mp = str(tmp_path / "mnt")
    mounted.add(mp)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    runtime.publish(mp, {"pid": dead.pid})
    assert runtime.read_all() == []
    assert list(rundir.iterdir()) == []


def test_entry_of_unmounted_path_is_removed(rundir, mounted, tmp_path):
    runtime.publish(str(tmp_path / "gone"), {})
    assert runtime.read_all() == []
    assert list(rundir.iterdir()) == []


def test_a_mount_made_while_entries_are_read_is_not_taken_for_stale(rundir, mounted, tmp_path,
                                                                     monkeypatch):
    """Another process's ``status`` or ``umount`` reads the runtime directory while a mount starts:
    its fresh entry stays (it once was deleted, and a ``umount`` right after found nothing to wait
    for and returned before the mount's uploads were stored)."""
    mp = str(tmp_path / "mnt")
    monkeypatch.setattr(runtime, "mounted_paths", lambda: set(mounted))  # the table as read then
    dirs = runtime._existing_dirs

    def mount_starts_meanwhile():
        mounted.add(mp)  # the mount is made, then its process publishes its first entry
        runtime.publish(mp, {"bucket": "b"})
        return dirs()

    monkeypatch.setattr(runtime, "_existing_dirs", mount_starts_meanwhile)
    assert [e["bucket"] for e in runtime.read_all()] == ["b"]
    monkeypatch.setattr(runtime, "_existing_dirs", dirs)
    assert runtime.find(mp) is not None


def test_a_stale_entry_replaced_by_a_new_mount_is_kept(rundir, mounted, tmp_path, monkeypatch):
    """The entry of a dead mount process is replaced by the one of a mount started again at the
    same mountpoint between being read and being removed: the new one stays."""
    mp = str(tmp_path / "mnt")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    runtime.publish(mp, {"pid": dead.pid})
    paths = runtime.mounted_paths

    def remounted_meanwhile():
        mounted.add(mp)
        runtime.publish(mp, {"bucket": "again"})
        return paths()

    monkeypatch.setattr(runtime, "mounted_paths", remounted_meanwhile)
    assert runtime.read_all() == []  # this reader saw only the dead entry
    monkeypatch.setattr(runtime, "mounted_paths", paths)
    assert [e["bucket"] for e in runtime.read_all()] == ["again"]


def test_corrupt_entry_is_removed(rundir, mounted, tmp_path):
    mp = str(tmp_path / "mnt")
    mounted.add(mp)
    runtime.publish(mp, {})
    (rundir / "0123456789abcdef.json").write_text("{not json")
    assert [e["mountpoint"] for e in runtime.read_all()] == [mp]
    assert len(list(rundir.iterdir())) == 1


def test_readers_find_entries_published_without_xdg(rundir, mounted, tmp_path, monkeypatch):
    """mount(8) starts the daemon with an empty environment; status from a shell must see it."""
    mp = str(tmp_path / "mnt")
    mounted.add(mp)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    runtime.publish(mp, {"bucket": "b"})
    assert (tmp_path / "tmp" / f"s3mount-{os.getuid()}").is_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(rundir.parent))
    assert [e["bucket"] for e in runtime.read_all()] == ["b"]
    runtime.withdraw(mp)
    assert runtime.read_all() == []


def test_foreign_or_open_directory_is_refused(rundir, tmp_path):
    rundir.mkdir(mode=0o755)
    os.chmod(rundir, 0o755)
    with pytest.raises(runtime.RuntimeDirError, match="accessible by other users"):
        runtime.publish(str(tmp_path), {})
    os.rmdir(rundir)
    os.symlink(tmp_path, rundir)
    with pytest.raises(runtime.RuntimeDirError, match="not a directory"):
        runtime.publish(str(tmp_path), {})


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to create a directory owned by another")
def test_directory_owned_by_someone_else_is_refused(rundir, tmp_path):
    rundir.mkdir(mode=0o700)
    os.chown(rundir, 65534, 65534)
    with pytest.raises(runtime.RuntimeDirError, match="belongs to uid 65534"):
        runtime.publish(str(tmp_path), {})


def test_mountinfo_parsing_unescapes(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
        "99 22 0:50 / /tmp/a\\040b rw,nosuid,nodev - fuse.s3mount s3://b rw,user_id=0\n"
        "120 99 0:61 / /tmp/a\\040b rw,nosuid,nodev - fuse.s3mount s3://b rw,user_id=0\n")
    assert runtime.mounted_paths(str(info)) == {"/", "/tmp/a b"}
    assert runtime.devices_at("/tmp/a b", str(info)) == ["0:50", "0:61"]


def test_mountpoint_key_resolves_only_the_parent(tmp_path):
    """The parent is resolved; the last component is kept (stat on it would reach the mount)."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    assert runtime.mountpoint_key(str(tmp_path / "link" / "mnt")) == str(real / "mnt")
    assert runtime.mountpoint_key("/") == "/"


def test_outcome_is_taken_once_and_only_for_its_mountpoint(rundir, tmp_path):
    runtime.leave_outcome(str(tmp_path / "m"), 3)
    assert runtime.take_outcome(os.getpid(), str(tmp_path / "other")) == 0  # not its mount
    runtime.leave_outcome(str(tmp_path / "m"), 3)
    assert runtime.take_outcome(os.getpid(), str(tmp_path / "m")) == 3
    assert runtime.take_outcome(os.getpid(), str(tmp_path / "m")) == 0


def test_outcome_nobody_took_is_removed_after_a_while(rundir, mounted, tmp_path):
    runtime.leave_outcome(str(tmp_path / "m"), 1)
    (path,) = [p for p in os.listdir(rundir) if p.endswith(".exit")]
    old = time.time() - runtime.OUTCOME_TTL - 10
    os.utime(os.path.join(rundir, path), (old, old))
    runtime.read_all()
    assert not [p for p in os.listdir(rundir) if p.endswith(".exit")]
