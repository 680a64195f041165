"""Issue #3: the POSIX semantics ordinary tools rely on, through a real mount and in the bucket."""

from __future__ import annotations

import base64
import ctypes
import errno
import functools
import io
import json
import os
import random
import socket
import stat
import struct
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mountlib import Mount, Mounter, _alive, mount_status, run

from s3mount.sandbox.faultproxy import Fault, FaultProxy

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    rc = libc.renameat2(AT_FDCWD, str(old).encode(), AT_FDCWD, str(new).encode(), flags)
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def run_callers(caller: Callable[[int], None], count: int) -> None:
    """``caller(n)`` for n in range(count), all at once in threads; fails if any is still
    blocked after 120 s."""
    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "callers still blocked after 120 s"


def keys_under(s3: Any, bucket: str, prefix: str) -> set[str]:
    """Every key in ``bucket`` under ``prefix`` (all pages), read with boto3."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def make_tree(root: Path, files: int, *, depth: int = 3, seed: int = 1) -> None:
    rnd = random.Random(seed)
    dirs = [root]
    for i in range(files):
        if i % 10 == 0 and len(dirs) < 40:
            parent = rnd.choice(dirs)
            if len(parent.relative_to(root).parts) < depth:
                d = parent / f"dir{i}"
                d.mkdir(parents=True, exist_ok=True)
                dirs.append(d)
        f = rnd.choice(dirs) / f"file{i}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(rnd.randbytes(rnd.randint(0, 3000)))
        os.chmod(f, rnd.choice([0o644, 0o600, 0o755, 0o640]))
        t = 1_500_000_000 + rnd.randint(0, 10**8)
        os.utime(f, (t, t))


def test_rsync_second_run_transfers_nothing(mnt: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 120)
    run(["rsync", "-a", f"{src}/", f"{mnt.path}/dst/"], timeout=600)
    r = run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{mnt.path}/dst/"], timeout=600)
    assert r.stdout.strip() == "", f"second rsync changed things:\n{r.stdout}"
    run(["diff", "-r", str(src), str(mnt.path / "dst")])


def test_cp_a_keeps_mode_and_mtime(mnt: Mount, s3, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("content")
    os.chmod(f, 0o604)
    os.utime(f, ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    run(["cp", "-a", str(f), str(mnt.path / "f")])
    st = os.stat(mnt.path / "f")
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert st.st_mtime_ns == 1_000_000_000_123_456_789
    md = s3.head_object(Bucket=mnt.bucket, Key="f")["Metadata"]
    assert int(md["mode"]) & 0o7777 == 0o604
    assert md["mtime"] == "1000000000.123456789"


def test_git_in_the_mount(mnt: Mount, tmp_path: Path) -> None:
    repo = mnt.path / "repo"
    make_tree(repo, 60, seed=7)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", HOME=str(tmp_path))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "first"]):
        run(cmd, cwd=repo, env=env, timeout=600)
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env, timeout=300).stdout == ""
    assert "first" in run(["git", "log", "--oneline"], cwd=repo, env=env).stdout
    run(["git", "gc", "-q"], cwd=repo, env=env, timeout=600)
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env, timeout=300).stdout == ""
    assert run(["git", "fsck", "--no-progress"], cwd=repo, env=env, timeout=300).returncode == 0


def test_editor_save_pattern_never_shows_partial_file(mnt: Mount) -> None:
    f = mnt.path / "doc.txt"
    old, new = b"old " * 50_000, b"new " * 60_000
    f.write_bytes(old)
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    stale = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal stale
        while not stop.is_set():
            try:
                data = f.read_bytes()
                seen.add(data[:4] + str(len(data)).encode())
            except OSError as e:
                if e.errno == errno.ESTALE:
                    stale += 1  # opened the very version being replaced (docs/SEMANTICS.md)
                else:
                    errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for i in range(5):
        swp = mnt.path / ".doc.txt.swp"
        with open(swp, "wb") as w:
            w.write(new if i % 2 == 0 else old)
            w.flush()
            os.fsync(w.fileno())
        os.rename(swp, f)
    stop.set()
    t.join(30)
    assert not errors, f"the target was missing or failed during a rename: {errors[:3]}"
    assert seen <= {b"old " + str(len(old)).encode(), b"new " + str(len(new)).encode()}, seen
    assert len(seen) >= 1 and stale < 20
    assert f.read_bytes() == new


def test_mv_directory_tree(mnt: Mount, s3, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    for i in range(200):
        p = src / f"d{i % 7}" / f"s{i % 3}" / f"f{i}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(str(i))
    run(["cp", "-r", str(src), str(mnt.path / "a")], timeout=600)
    ino = os.stat(mnt.path / "a" / "d1" / "s1" / "f1").st_ino
    run(["mv", str(mnt.path / "a"), str(mnt.path / "b")], timeout=600)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=mnt.bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    assert not [k for k in keys if k.startswith("a/")], "objects left behind"
    assert len([k for k in keys if k.startswith("b/") and not k.endswith("/")]) == 200
    run(["diff", "-r", str(src), str(mnt.path / "b")], timeout=300)
    assert not (mnt.path / "a").exists()
    assert os.stat(mnt.path / "b" / "d1" / "s1" / "f1").st_ino == ino


def test_rename_flags_and_replace(mnt: Mount, s3) -> None:
    a, b = mnt.path / "a", mnt.path / "b"
    a.write_text("A")
    b.write_text("B")
    ino = os.stat(a).st_ino
    with pytest.raises(OSError) as e:
        renameat2(a, b, RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        renameat2(a, b, RENAME_EXCHANGE)
    assert e.value.errno == errno.EINVAL
    assert b.read_text() == "B"
    renameat2(a, mnt.path / "c", RENAME_NOREPLACE)
    assert os.stat(mnt.path / "c").st_ino == ino
    os.rename(mnt.path / "c", b)
    assert b.read_text() == "A" and not a.exists()
    assert s3.get_object(Bucket=mnt.bucket, Key="b")["Body"].read() == b"A"
    (mnt.path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        os.rename(b, mnt.path / "d")
    (mnt.path / "e").mkdir()
    (mnt.path / "e" / "x").write_text("x")
    with pytest.raises(OSError) as e:
        os.rename(mnt.path / "d", mnt.path / "e")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        os.rename(mnt.path / "e", mnt.path / "e" / "inside")
    assert e.value.errno == errno.EINVAL


def test_truncate_append_and_sparse(mnt: Mount, s3) -> None:
    f = mnt.path / "t"
    f.write_bytes(b"0123456789")
    os.truncate(f, 4)
    assert f.read_bytes() == b"0123"
    os.truncate(f, 8)
    assert f.read_bytes() == b"0123\0\0\0\0"
    with open(f, "ab") as w:
        w.write(b"AB")
    assert f.read_bytes() == b"0123\0\0\0\0AB"
    with open(f, "r+b") as w:
        w.seek(20)
        w.write(b"Z")
        w.truncate(22)
    assert f.read_bytes() == b"0123\0\0\0\0AB" + b"\0" * 10 + b"Z\0"
    with open(f, "wb"):
        pass
    assert f.read_bytes() == b""
    assert s3.get_object(Bucket=mnt.bucket, Key="t")["Body"].read() == b""
    fd = os.open(f, os.O_WRONLY)
    os.ftruncate(fd, 3)
    os.close(fd)
    assert s3.get_object(Bucket=mnt.bucket, Key="t")["Body"].read() == b"\0\0\0"


def test_fsx_random_operations(mnt: Mount, tmp_path: Path) -> None:
    """2,000 random writes/truncates/reads at random offsets against a model file on local disk."""
    rnd = random.Random(42)
    model = tmp_path / "model"
    model.write_bytes(b"")
    target = mnt.path / "fsx"
    target.write_bytes(b"")
    maxlen = 256 * 1024
    with open(model, "r+b") as m, open(target, "r+b", buffering=0) as t:
        for i in range(2000):
            op = rnd.random()
            size = os.fstat(m.fileno()).st_size
            if op < 0.45:
                off = rnd.randint(0, maxlen)
                data = rnd.randbytes(rnd.randint(1, 16384))
                for fobj in (m, t):
                    fobj.seek(off)
                    fobj.write(data)
            elif op < 0.55:
                n = rnd.randint(0, maxlen)
                m.truncate(n)
                t.truncate(n)
            elif op < 0.6:
                os.fsync(t.fileno())
            elif op < 0.63:
                t.close()
                t = open(target, "r+b", buffering=0)  # noqa: SIM115 - reopened on purpose
            else:
                off = rnd.randint(0, max(size, 1))
                n = rnd.randint(1, 32768)
                m.seek(off)
                t.seek(off)
                assert t.read(n) == m.read(n), f"op {i}: read mismatch at {off}+{n}"
            m.flush()
            assert os.fstat(t.fileno()).st_size == os.fstat(m.fileno()).st_size, f"op {i}: size"
        t.close()
    assert target.read_bytes() == model.read_bytes()


def test_attributes_survive_remount(mounter: Mounter, bucket: str, s3) -> None:
    m = mounter(bucket)
    (m.path / "f").write_text("x")
    run(["touch", "-d", "2001-02-03 04:05:06", str(m.path / "f")])
    os.chmod(m.path / "f", 0o640)
    os.chown(m.path / "f", 1234, 5678)
    os.symlink("f", m.path / "link")
    (m.path / "d").mkdir(mode=0o700)
    os.utime(m.path / "d", (981173106, 981173106))
    m.unmount()
    m2 = mounter(bucket)
    st = os.stat(m2.path / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime)) == \
        "2001-02-03 04:05:06"
    assert os.readlink(m2.path / "link") == "f"
    assert (m2.path / "link").read_text() == "x"
    assert stat.S_ISLNK(os.lstat(m2.path / "link").st_mode)
    dst = os.stat(m2.path / "d")
    assert stat.S_IMODE(dst.st_mode) == 0o700 and int(dst.st_mtime) == 981173106
    md = s3.head_object(Bucket=bucket, Key="link")["Metadata"]
    assert stat.S_ISLNK(int(md["mode"]))


def test_reads_metadata_of_s3fs_and_rclone_objects(mounter: Mounter, bucket: str, s3) -> None:
    s3.put_object(Bucket=bucket, Key="s3fs", Body=b"a",
                  Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": "42", "gid": "43",
                            "mtime": "1234567890"})
    s3.put_object(Bucket=bucket, Key="rclone", Body=b"b",
                  Metadata={"mtime": "1234567890.5", "mode": "100640"})
    s3.put_object(Bucket=bucket, Key="s3fslink", Body=b"s3fs",
                  Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    s3.put_object(Bucket=bucket, Key="plain", Body=b"c")
    m = mounter(bucket, "uid=7,gid=8,file_mode=0444")
    st = os.stat(m.path / "s3fs")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o600, 42, 43,
                                                                              1234567890)
    st = os.stat(m.path / "rclone")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 1234567890_500_000_000
    assert os.readlink(m.path / "s3fslink") == "s3fs"
    st = os.stat(m.path / "plain")
    lm = s3.head_object(Bucket=bucket, Key="plain")["LastModified"].timestamp()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o444, 7, 8)
    assert abs(st.st_mtime - lm) < 1


def test_changes_behind_the_mount_show_after_ttl(mounter: Mounter, bucket: str, s3) -> None:
    m = mounter(bucket, "attr_timeout=0.5,dir_timeout=0.5,neg_timeout=0.5")
    (m.path / "f").write_text("one")
    assert "g" not in os.listdir(m.path)
    s3.put_object(Bucket=bucket, Key="f", Body=b"two!")
    s3.put_object(Bucket=bucket, Key="g", Body=b"new")
    time.sleep(1.2)
    assert (m.path / "f").read_text() == "two!"
    assert "g" in os.listdir(m.path)
    s3.delete_object(Bucket=bucket, Key="g")
    time.sleep(1.2)
    assert not (m.path / "g").exists()


def test_a_file_replaced_behind_the_mount_reads_whole_at_once(
        mounter: Mounter, bucket: str, s3) -> None:
    """Read right after another tool replaced it by a longer one: the open finds the new
    version, and the kernel, which still held the old size (attr_timeout), cut the read at it
    (100,000 bytes of the new file) until the open made it ask for the size again."""
    old, new = b"o" * 100_000, b"n" * 200_000  # more than a lookup fetches, less than an open
    s3.put_object(Bucket=bucket, Key="f", Body=old)
    m = mounter(bucket, "attr_timeout=600")
    assert os.stat(m.path / "f").st_size == len(old)
    s3.put_object(Bucket=bucket, Key="f", Body=new)
    with open(m.path / "f", "rb") as f:
        assert f.read() == new
        assert os.fstat(f.fileno()).st_size == len(new)


def _while_held(proxy: FaultProxy, method: str, op: Callable[[], object],
                meanwhile: Callable[[], object]) -> None:
    """Run ``op`` with its first ``method`` request forwarded but its answer held, ``meanwhile``
    while it is held, then let it answer; ``op`` must succeed."""
    proxy.set_faults([Fault("hold", count=1, methods=(method,))])
    failed: list[BaseException] = []

    def run_op() -> None:
        try:
            op()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    t = threading.Thread(target=run_op, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while proxy.stats().get("hold", 0) < 1:
            assert time.monotonic() < deadline, f"no {method} was held"
            time.sleep(0.05)
        meanwhile()
    finally:
        proxy.release()
        t.join(60)
    assert not t.is_alive() and not failed, failed


@pytest.mark.parametrize("op", ["unlink", "rename"])
def test_removing_a_name_while_the_directory_is_listed(pmounter: Mounter, proxy: FaultProxy,
                                                       bucket: str, s3, op: str) -> None:
    """A listing of the directory (opendir) made while an unlink or rename waits for its
    DELETE's answer no longer shows the name and takes its inode's path away: an unlink then
    failed with EIO ("internal error": it made a key of that path, None), a rename left the
    file under a new inode number, its own inode nameless."""
    s3.put_object(Bucket=bucket, Key="d/keep", Body=b"k")
    s3.put_object(Bucket=bucket, Key="d/f", Body=b"data")
    m = pmounter(bucket)
    d = m.path / "d"
    assert sorted(os.listdir(d)) == ["f", "keep"]
    ino = os.stat(d / "f").st_ino
    listed: list[int] = []
    _while_held(proxy, "DELETE", lambda: os.unlink(d / "f") if op == "unlink" else
                os.rename(d / "f", d / "g"),
                lambda: listed.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY)))
    os.close(listed[0])
    assert sorted(os.listdir(d)) == (["keep"] if op == "unlink" else ["g", "keep"])
    assert not os.path.lexists(d / "f")
    if op == "rename":
        assert (d / "g").read_bytes() == b"data"
        assert os.stat(d / "g").st_ino == ino


def test_a_lookup_answered_after_an_unlink_of_its_name_does_not_bring_it_back(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """stat() of a listed file asks the bucket (its GET held) while another program unlinks
    it (the kernel holds neither back: both revalidate the listed entry; the stat then finds
    it or not, both are right as it overlaps the unlink). The stat's answer,
    older than the unlink, installed the file again: it stayed for attr_timeout after the
    unlink had returned (stat found it, an O_EXCL create failed with EEXIST)."""
    s3.put_object(Bucket=bucket, Key="d/keep", Body=b"k")
    s3.put_object(Bucket=bucket, Key="d/f", Body=b"data")
    m = pmounter(bucket, "attr_timeout=600", "dir_timeout=600", "neg_timeout=600")
    d = m.path / "d"
    assert sorted(os.listdir(d)) == ["f", "keep"]  # f listed, its metadata not known yet
    _while_held(proxy, "GET", lambda: os.path.lexists(d / "f"), lambda: os.unlink(d / "f"))
    assert not os.path.lexists(d / "f")
    os.close(os.open(d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY))


def test_a_directory_read_after_an_unlink_does_not_bring_the_name_back(mnt: Mount) -> None:
    """A directory opened before an unlink and read after it: readdirplus handed the kernel
    the removed name with its attributes, and lookups found it again (for attr_timeout).
    Whether readdir lists it is unspecified (POSIX); a lookup must not find it."""
    d = mnt.path / "d"
    d.mkdir()
    for name in ("f", "g"):
        (d / name).write_bytes(b"x")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(d / "f")
        assert "g" in os.listdir(fd)  # the listing opendir took before the unlink
    finally:
        os.close(fd)
    assert not os.path.lexists(d / "f")


def test_a_directory_read_after_a_rename_does_not_bring_the_old_name_back(mnt: Mount) -> None:
    """The same for a rename: the inode, listed under its old name by the opendir before it,
    keeps its number at the new name, and readdirplus handed it to the kernel under the old
    name too: the renamed file was found at both names, and the old one stayed after unlink
    of the new one (seen with 16 threads making, renaming and listing one directory)."""
    d = mnt.path / "d"
    d.mkdir()
    for name in ("f", "g"):
        (d / name).write_bytes(b"x")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(d / "f", d / "h")
        assert "g" in os.listdir(fd)  # the listing opendir took before the rename
    finally:
        os.close(fd)
    assert not os.path.lexists(d / "f")
    os.unlink(d / "h")
    assert sorted(os.listdir(d)) == ["g"]


def test_a_listing_during_a_background_upload_does_not_end_the_mount(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """async_upload: a file rewritten and closed is being stored (its PUT held at the
    server) when another tool deletes it and the directory is listed: the listing no longer shows it and takes its
    inode's path away. The upload, once answered, used that path (None): the mount process
    died of the exception in its writeback task."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"old")
    m = pmounter(bucket, "async_upload")
    f = m.path / "f"
    proxy.set_faults([Fault("hold", count=1, methods=("PUT",), path=r"/f($|\?)")])
    f.write_bytes(b"new")
    deadline = time.monotonic() + 30
    while proxy.stats().get("hold", 0) < 1:
        assert time.monotonic() < deadline, "the upload did not start"
        time.sleep(0.05)
    s3.delete_object(Bucket=bucket, Key="f")
    try:
        assert os.listdir(m.path) == []
    finally:
        proxy.release()
        released = time.time()
    deadline = time.monotonic() + 30
    while m.pid is not None and _alive(m.pid):
        st = mount_status(m.path, m.env)
        if st["updated_at"] > released and not st["pending_uploads"]:
            break
        assert time.monotonic() < deadline, "the upload did not end"
        time.sleep(0.2)
    assert m.pid is not None and _alive(m.pid), "the mount process died"
    assert os.listdir(m.path) == []  # stored, then deleted by the other tool


def test_odd_keys_are_skipped_or_resolved(mounter: Mounter, bucket: str, s3) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"file")
    s3.put_object(Bucket=bucket, Key="a/x", Body=b"in dir")
    for k in ("bad//double", "dot/./x", "dotdot/../x", "ok/fine"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"z")
    m = mounter(bucket)
    assert stat.S_ISDIR(os.stat(m.path / "a").st_mode)
    assert (m.path / "a" / "x").read_text() == "in dir"
    assert os.listdir(m.path / "bad") == []
    assert os.listdir(m.path / "dot") == []
    assert (m.path / "ok" / "fine").read_text() == "z"
    run(["find", str(m.path)])
    with pytest.raises(OSError) as e:
        os.open(os.path.join(os.fsencode(m.path), b"bad\xff\xfe"), os.O_CREAT | os.O_WRONLY)
    assert e.value.errno == errno.EINVAL
    assert "both a file and a directory" in m.log()


def test_close_to_open_across_mounts(mounter: Mounter, bucket: str) -> None:
    a = mounter(bucket)
    b = mounter(bucket, "attr_timeout=0,dir_timeout=0,neg_timeout=0")
    data = os.urandom(3 * 1024 * 1024 + 5)
    (a.path / "shared").write_bytes(data)
    assert (b.path / "shared").read_bytes() == data
    with open(a.path / "shared", "r+b") as f:
        f.seek(100)
        f.write(b"CHANGED")
    assert (b.path / "shared").read_bytes() == data[:100] + b"CHANGED" + data[107:]


def test_statfs_and_fsync(mnt: Mount, s3) -> None:
    st = os.statvfs(mnt.path)
    assert st.f_bavail > 0 and st.f_namemax == 255
    with open(mnt.path / "s", "wb") as f:
        f.write(b"synced")
        f.flush()
        os.fsync(f.fileno())
        assert s3.get_object(Bucket=mnt.bucket, Key="s")["Body"].read() == b"synced"
        f.write(b" more")
        f.flush()
        os.fdatasync(f.fileno())
        assert s3.get_object(Bucket=mnt.bucket, Key="s")["Body"].read() == b"synced more"


def test_streamed_writes_stay_correct(mnt: Mount, s3) -> None:
    """Sequential writers stream parts while writing; seeking back, truncating or setting times
    mid-way must still leave exactly the written content and metadata in the bucket."""
    part = 8 * 1024 * 1024
    data = bytearray(os.urandom(3 * part + 123))
    with open(mnt.path / "seq", "wb") as f:  # plain sequential: streamed
        f.write(data)
    assert s3.get_object(Bucket=mnt.bucket, Key="seq")["Body"].read() == data
    with open(mnt.path / "back", "wb") as f:  # streaming, then a write behind the stream
        f.write(data[: 2 * part + 5])
        f.seek(10)
        f.write(b"REWRITTEN")
        f.seek(2 * part + 5)
        f.write(data[2 * part + 5:])
    data[10:19] = b"REWRITTEN"
    assert s3.get_object(Bucket=mnt.bucket, Key="back")["Body"].read() == data
    with open(mnt.path / "timed", "wb") as f:  # cp -p style: futimens/fchmod before close
        f.write(data)
        os.utime(f.fileno(), ns=(1_111_111_111_000_000_000, 1_111_111_111_000_000_000))
        os.fchmod(f.fileno(), 0o600)
    md = s3.head_object(Bucket=mnt.bucket, Key="timed")["Metadata"]
    assert md["mtime"] == "1111111111" and int(md["mode"]) & 0o777 == 0o600
    with open(mnt.path / "trunc", "wb") as f:  # streaming, then truncated shorter
        f.write(data)
        f.truncate(part + 1)
    assert s3.get_object(Bucket=mnt.bucket, Key="trunc")["Body"].read() == data[: part + 1]


# -- issue #17: the metadata conformance suites and archivers check -------------------------------


def _meta(s3, bucket: str, key: str) -> dict[str, str]:
    return dict(s3.head_object(Bucket=bucket, Key=key)["Metadata"])


def test_special_files_are_stored_as_s3fs_does(mounter: Mounter, bucket: str, s3) -> None:
    """FIFOs, sockets and devices are empty objects whose mode carries the kind (rdev for
    devices); they can be renamed, chmod-ed and removed, survive a remount, and one written by
    s3fs shows as what it is."""
    m = mounter(bucket)
    os.mkfifo(m.path / "fifo", 0o640)
    os.mknod(m.path / "chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(m.path / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 9))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(m.path / "sock"))
    assert stat.S_ISFIFO(os.lstat(m.path / "fifo").st_mode)
    assert stat.S_ISSOCK(os.lstat(m.path / "sock").st_mode)
    md = _meta(s3, bucket, "chr")
    assert int(md["mode"]) == stat.S_IFCHR | 0o600 and int(md["rdev"]) == os.makedev(1, 3)
    assert int(_meta(s3, bucket, "fifo")["mode"]) == stat.S_IFIFO | 0o640
    assert s3.head_object(Bucket=bucket, Key="sock")["ContentLength"] == 0
    os.chmod(m.path / "fifo", 0o604)
    os.rename(m.path / "fifo", m.path / "fifo2")
    os.unlink(m.path / "sock")
    with pytest.raises(FileExistsError):
        os.mkfifo(m.path / "chr")
    s3.put_object(Bucket=bucket, Key="froms3fs", Body=b"",
                  Metadata={"mode": str(stat.S_IFIFO | 0o600)})
    m.unmount()
    m2 = mounter(bucket)
    st = os.lstat(m2.path / "fifo2")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o604
    assert stat.S_ISFIFO(os.lstat(m2.path / "froms3fs").st_mode)
    st = os.lstat(m2.path / "chr")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    st = os.lstat(m2.path / "blk")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 9)
    assert sorted(os.listdir(m2.path)) == ["blk", "chr", "fifo2", "froms3fs"]
    assert not (m2.path / "fifo").exists()
    with pytest.raises(OSError) as e:
        os.link(m2.path / "chr", m2.path / "hard")
    assert e.value.errno == errno.EPERM


def test_parent_times_move_with_entries_and_survive_remount(mounter: Mounter, bucket: str,
                                                            tmp_path: Path) -> None:
    """Making, removing and renaming entries moves the parent's mtime and ctime (kept in the
    mount's cache: they survive a remount with the same cache directory); a rename moves the
    ctime of what it renames."""
    m = mounter(bucket)
    d, e = m.path / "d", m.path / "e"
    d.mkdir()
    s3_implicit = m.path / "d" / "x"  # e is a marker directory, d gets one too; both are tested
    e.mkdir()

    def changed(path: Path, action: Callable[[], object]) -> None:
        before = os.stat(path)
        time.sleep(0.02)
        action()
        after = os.stat(path)
        assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns

    changed(d, lambda: s3_implicit.write_text("x"))
    changed(d, lambda: (d / "sub").mkdir())
    changed(d, lambda: os.symlink("x", d / "ln"))
    changed(d, lambda: os.mkfifo(d / "fifo"))
    changed(d, lambda: (d / "sub").rmdir())
    changed(d, lambda: (d / "ln").unlink())
    changed(e, lambda: os.rename(d / "x", e / "x"))
    changed(d, lambda: os.rename(e / "x", d / "y"))
    changed(m.path, lambda: (m.path / "top").write_text("t"))
    ctime = os.stat(d / "y").st_ctime_ns
    time.sleep(0.02)
    os.rename(d / "y", d / "z")
    assert os.stat(d / "z").st_ctime_ns > ctime
    kept = {p: os.stat(p).st_mtime_ns for p in (d, e, m.path)}
    m.unmount()
    m2 = mounter(bucket, path=m.path)
    assert {p: os.stat(p).st_mtime_ns for p in kept} == kept
    m2.unmount()
    # Another machine (a fresh cache directory) sees the times the bucket holds: older ones.
    mounter(bucket, path=m.path, cache_dir=tmp_path / "other-cache")
    assert os.stat(d).st_mtime_ns < kept[d]


def test_atime_and_times_beyond_32_bits_round_trip(mounter: Mounter, bucket: str, s3) -> None:
    """An atime set explicitly is kept (x-amz-meta-atime, as s3fs writes it); times keep their
    nanoseconds, and times before 1970 and after 2038 are stored as they are."""
    m = mounter(bucket)
    f, g = m.path / "f", m.path / "g"
    f.write_text("x")
    g.write_text("y")
    atime, mtime = -1_234_567_890_123_456_789, 4_102_444_800_987_654_321  # 1930, 2100
    os.utime(f, ns=(atime, mtime))
    run(["touch", "-a", "-d", "2001-02-03 04:05:06.5 UTC", str(g)])
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    md = _meta(s3, bucket, "f")
    # s3fs's spelling of a timespec: seconds, then the nanoseconds after them.
    assert md["atime"] == "-1234567891.876543211" and md["mtime"] == "4102444800.987654321"
    g_mtime = os.stat(g).st_mtime_ns
    run(["touch", "-m", "-d", "2002-01-01 UTC", str(f)])  # the atime stays
    assert os.stat(f).st_atime_ns == atime
    m.unmount()
    m2 = mounter(bucket)
    st = os.stat(m2.path / "f")
    assert st.st_atime_ns == atime and st.st_mtime_ns == 1_009_843_200 * 10**9
    st = os.stat(m2.path / "g")
    assert st.st_atime_ns == 981_173_106_500_000_000 and st.st_mtime_ns == g_mtime
    (m2.path / "g").read_text()  # the mount is noatime: reading moves nothing
    assert os.stat(m2.path / "g").st_atime_ns == 981_173_106_500_000_000


def test_link_counts(mnt: Mount) -> None:
    """A directory counts 2 and its known subdirectories; an unlinked open file counts 0."""
    d = mnt.path / "d"
    d.mkdir()
    assert os.stat(d).st_nlink == 2
    for name in ("a", "b", "c"):
        (d / name).mkdir()
    (d / "file").write_text("x")
    assert os.stat(d).st_nlink == 5
    (d / "b").rmdir()
    assert os.stat(d).st_nlink == 4
    with open(d / "file") as fh:
        assert os.fstat(fh.fileno()).st_nlink == 1
        os.unlink(d / "file")
        assert os.fstat(fh.fileno()).st_nlink == 0
        assert fh.read() == "x"


def test_no_xattr_stops_the_kernel_asking(mounter: Mounter, bucket: str, tmp_path: Path) -> None:
    """``-o no_xattr``: extended attributes fail with ENOTSUP, the kernel stops sending the
    requests ``ls -l`` and every write make (one reaches the mount, not one per call), and
    ``cp -a`` still copies. With xattrs on, each call is a request of its own."""
    calls = 30
    for options, most in ((("debug",), None), (("debug", "no_xattr"), 1)):
        m = mounter(bucket, *options)
        f = m.path / "f"
        f.write_text("x")
        for _ in range(calls):
            try:
                os.getxattr(f, "security.selinux")
            except OSError as exc:
                assert exc.errno == (errno.ENOTSUP if most else errno.ENODATA)
        seen = m.log().count("getxattr(")
        if most is None:
            assert seen >= calls
            m.unmount()
            continue
        assert seen <= most
        for call in (functools.partial(os.setxattr, f, "user.color", b"red"),
                     functools.partial(os.getxattr, f, "user.color"),
                     functools.partial(os.listxattr, f)):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.ENOTSUP
        src = tmp_path / "src"
        src.mkdir()
        (src / "a").write_text("a")
        os.setxattr(src / "a", "user.k", b"v")
        subprocess.run(["cp", "-a", str(src), str(m.path / "copy")], check=True, timeout=30,
                       capture_output=True)
        assert (m.path / "copy" / "a").read_text() == "a"


def test_xattrs_in_s3fs_format(mounter: Mounter, bucket: str, s3) -> None:
    """user.* and POSIX ACL names are kept in x-amz-meta-xattr as s3fs writes it (URL-encoded
    JSON of base64 values), both ways; past S3's 2 KiB of user metadata setxattr is E2BIG."""
    m = mounter(bucket)
    f = m.path / "f"
    f.write_text("x")
    os.setxattr(f, "user.color", b"red")
    os.setxattr(f, "user.bin", bytes(range(256))[:40])
    acl = struct.pack("<I", 2) + b"".join(  # user::rw- user:1000:r-- group::r-- mask::r-- other::---
        struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in
        ((1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
         (0x20, 0, 0xFFFFFFFF)))
    os.setxattr(f, "system.posix_acl_access", acl)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640  # owner, mask, other: as ext4 does
    assert os.getxattr(f, "user.color") == b"red"
    raw = json.loads(urllib.parse.unquote(_meta(s3, bucket, "f")["xattr"]))
    assert base64.b64decode(raw["user.color"]) == b"red"
    assert base64.b64decode(raw["user.bin"]) == bytes(range(40))
    os.removexattr(f, "user.bin")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.bin")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.capability")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.setxattr(f, "trusted.x", b"1")
    assert e.value.errno in (errno.ENOTSUP, errno.EPERM)
    with pytest.raises(OSError) as e:
        os.setxattr(f, "user.big", b"v" * 2000)
    assert e.value.errno == errno.E2BIG
    assert "S3 allows 2048" in m.log()
    assert os.getxattr(f, "user.color") == b"red"  # the refused one lost nothing
    (m.path / "d").mkdir()
    os.setxattr(m.path / "d", "user.dir", b"yes")
    # What s3fs wrote reads back here.
    s3fs_value = urllib.parse.quote(json.dumps({"user.from": base64.b64encode(b"s3fs").decode()}))
    s3.put_object(Bucket=bucket, Key="s3fs", Body=b"z", Metadata={"xattr": s3fs_value})
    m.unmount()
    m2 = mounter(bucket)
    f = m2.path / "f"
    assert sorted(os.listxattr(f)) == ["system.posix_acl_access", "user.color"]
    assert os.getxattr(f, "user.color") == b"red"
    assert os.getxattr(f, "system.posix_acl_access") == acl  # stored, not enforced
    assert os.getxattr(m2.path / "d", "user.dir") == b"yes"
    assert os.getxattr(m2.path / "s3fs", "user.from") == b"s3fs"
    with open(f, "a") as fh:  # a write (the kernel asks for security.capability first)
        fh.write("y")
    assert os.getxattr(f, "user.color") == b"red"


def test_xattr_reads_cost_no_request(pmounter: Mounter, proxy, bucket: str, s3) -> None:
    s3.put_object(Bucket=bucket, Key="f", Body=b"x", Metadata={"xattr": "%7B%7D"})
    m = pmounter(bucket, "attr_timeout=300", "dir_timeout=300")
    os.stat(m.path / "f")
    before = proxy.stats()
    for _ in range(3):
        assert os.listxattr(m.path / "f") == []
        with pytest.raises(OSError):
            os.getxattr(m.path / "f", "user.none")
        for name in ("security.capability", "security.selinux", "system.posix_acl_access"):
            with pytest.raises(OSError):
                os.getxattr(m.path / "f", name)  # asked before writes, by ls -l
        run(["getfattr", "-d", "-m", "-", str(m.path / "f")])
    assert {k: n for k, n in proxy.stats().items() if k.startswith("req ")} == \
        {k: n for k, n in before.items() if k.startswith("req ")}


def test_other_tools_directory_objects(mounter: Mounter, bucket: str, s3) -> None:
    """Old s3fs's ``dir`` (empty, application/x-directory) and Hadoop's ``dir_$folder$`` show
    as directories and go with rmdir and rename; a rename guesses the Content-Type again."""
    s3.put_object(Bucket=bucket, Key="olds3fs", Body=b"", ContentType="application/x-directory")
    s3.put_object(Bucket=bucket, Key="olds3fs/in", Body=b"1")
    s3.put_object(Bucket=bucket, Key="empty", Body=b"", ContentType="application/x-directory")
    s3.put_object(Bucket=bucket, Key="hadoop_$folder$", Body=b"")
    s3.put_object(Bucket=bucket, Key="gone_$folder$", Body=b"")
    m = mounter(bucket)
    assert sorted(os.listdir(m.path)) == ["empty", "gone", "hadoop", "olds3fs"]
    for name in ("empty", "gone", "hadoop", "olds3fs"):
        assert (m.path / name).is_dir(), name
    assert os.listdir(m.path / "olds3fs") == ["in"]
    (m.path / "empty").rmdir()
    (m.path / "gone").rmdir()
    os.rename(m.path / "hadoop", m.path / "renamed")
    (m.path / "page.txt").write_text("<p>")
    os.rename(m.path / "page.txt", m.path / "page.html")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"olds3fs", "olds3fs/in", "renamed/", "page.html"}
    assert s3.head_object(Bucket=bucket, Key="page.html")["ContentType"] == "text/html"


def test_fifty_callers_in_one_directory_agree(mounter: Mounter, bucket: str, s3) -> None:
    """Lookups and listings of one directory run at once (FUSE_PARALLEL_DIROPS, .ci/build-libfuse)
    while files are made, renamed and removed in it: no caller sees an error or a wrong size,
    a listing never lacks a name that existed throughout, and the bucket ends as the callers
    left it. Zero timeouts, so every operation reaches the mount."""
    shared = [f"e{i:02d}" for i in range(20)]
    for name in shared:
        s3.put_object(Bucket=bucket, Key=f"d/{name}", Body=name.encode() * 3)
    m = mounter(bucket, "dir_timeout=0", "attr_timeout=0", "neg_timeout=0")
    d = m.path / "d"
    errors: list[str] = []
    kept: dict[str, bytes] = {}
    lock = threading.Lock()

    def caller(n: int) -> None:
        rng = random.Random(n)
        mine: list[str] = []
        try:
            for k in range(8):
                op = rng.choice(["stat", "stat", "list", "make", "make", "rename", "remove"])
                if op == "stat":
                    name = rng.choice(shared)
                    if os.stat(d / name).st_size != 3 * len(name):
                        errors.append(f"{n}: wrong size of {name}")
                elif op == "list":
                    seen = set(os.listdir(d))
                    if not seen >= {*shared, *mine}:
                        errors.append(f"{n}: listing lacks {sorted({*shared, *mine} - seen)}")
                elif op == "make":
                    name = f"t{n:02d}_{k}"
                    (d / name).write_bytes(name.encode())
                    mine.append(name)
                elif op == "rename" and mine:
                    old = mine.pop(rng.randrange(len(mine)))
                    os.rename(d / old, d / f"{old}r")
                    mine.append(f"{old}r")
                elif op == "remove" and mine:
                    os.unlink(d / mine.pop(rng.randrange(len(mine))))
        except OSError as exc:
            errors.append(f"{n}: {exc!r}")
        with lock:
            kept.update({name: name.rstrip("r").encode() for name in mine})

    run_callers(caller, 50)
    assert not errors, errors[:10]
    assert sorted(os.listdir(d)) == sorted([*shared, *kept])
    assert {k[2:] for k in keys_under(s3, bucket, "d/")} == {*shared, *kept}
    for name, data in kept.items():
        assert s3.get_object(Bucket=bucket, Key=f"d/{name}")["Body"].read() == data


def test_sixteen_writers_in_one_directory_read_back_what_they_closed(
        mounter: Mounter, bucket: str, s3) -> None:
    """async_upload, default timeouts: 16 callers in one directory make, rewrite, rename and
    remove files (mostly their own, some of others'), list it, read back each file right after
    close() or rename and read others' files. Every read gives the content last closed (a file
    read b'' after a listing answered while its upload waited), no name outlives its unlink or
    rename (readdirplus handed a renamed file back under its old name), and the directory and
    the bucket end as the callers left them."""
    m = mounter(bucket, "async_upload")
    d = m.path / "d"
    d.mkdir()
    errors: list[str] = []
    lock = threading.Lock()
    files: dict[str, bytes] = {}  # name -> content last closed
    owner: dict[str, int] = {}
    busy: set[str] = set()  # names a caller is rewriting, renaming or removing
    rewrites: dict[str, int] = {}  # name -> rewrites begun or ended (odd: one under way)

    def claim(rng: random.Random, n: int, own: bool) -> str | None:
        with lock:
            names = sorted(k for k in files if (owner[k] == n) == own and k not in busy)
            name = rng.choice(names) if names else None
            if name is not None:
                busy.add(name)
            return name

    def read_back(n: int, name: str, want: bytes) -> None:
        if (got := (d / name).read_bytes()) != want:
            errors.append(f"{n}: {name} read back {len(got)} bytes, not {len(want)}")

    def gone(n: int, name: str) -> None:
        if os.path.lexists(d / name):
            errors.append(f"{n}: {name} still there after it was renamed or removed")

    def caller(n: int) -> None:
        rng = random.Random(n)
        for k in range(25):
            op = rng.choice(["make", "make", "make", "rewrite", "rename", "rename", "remove",
                             "read", "read", "take", "list", "list"])
            data = rng.randbytes(rng.choice([1, 100, 5000, 70000]))
            try:
                if op == "make":
                    name = f"t{n:02d}_{k}"
                    (d / name).write_bytes(data)
                    read_back(n, name, data)
                    with lock:
                        files[name], owner[name] = data, n
                elif op == "rewrite" and (name := claim(rng, n, True)) is not None:
                    with lock:
                        rewrites[name] = rewrites.get(name, 0) + 1
                    (d / name).write_bytes(data)
                    read_back(n, name, data)
                    with lock:
                        files[name] = data
                        rewrites[name] += 1
                        busy.discard(name)
                elif op in ("rename", "take") and \
                        (name := claim(rng, n, op == "rename")) is not None:
                    new = f"t{n:02d}_{k}r"
                    os.rename(d / name, d / new)
                    gone(n, name)
                    with lock:
                        data = files[new] = files.pop(name)
                        owner[new] = n
                        del owner[name]
                        busy.symmetric_difference_update({name, new})
                    read_back(n, new, data)
                    with lock:
                        busy.discard(new)
                elif op == "remove" and (name := claim(rng, n, True)) is not None:
                    os.unlink(d / name)
                    gone(n, name)
                    with lock:
                        del files[name], owner[name]
                        busy.discard(name)
                elif op == "read":
                    with lock:
                        names = sorted(k for k in files if owner[k] != n)
                        if not names:
                            continue
                        name = rng.choice(names)
                        want, seen = files[name], rewrites.get(name, 0)
                    try:
                        got = (d / name).read_bytes()
                    except FileNotFoundError:
                        continue  # renamed or removed meanwhile
                    with lock:
                        if got != want and seen % 2 == 0 and rewrites.get(name, 0) == seen:
                            errors.append(f"{n}: {name} of another read {len(got)} bytes, "
                                          f"not {len(want)}")
                elif op == "list":
                    with lock:
                        mine = {k for k in files if owner[k] == n}
                    listed = set(os.listdir(d))
                    with lock:
                        mine &= {k for k in files if owner[k] == n and k not in busy}
                    if not mine <= listed:
                        errors.append(f"{n}: the listing lacks {sorted(mine - listed)}")
            except OSError as exc:
                errors.append(f"{n}: {op}: {exc!r}")

    run_callers(caller, 16)
    assert not errors, errors[:10]
    assert sorted(os.listdir(d)) == sorted(files)
    m.unmount()
    assert keys_under(s3, bucket, "d/") == {"d/", *(f"d/{name}" for name in files)}
    for name, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=f"d/{name}")["Body"].read() == data, name


def test_a_file_open_across_mv_keeps_reading(mounter: Mounter, bucket: str, s3) -> None:
    """POSIX: a descriptor keeps working when its file is renamed, here by the mount itself (a
    copy, then the old key deleted): parts it had not read yet come from the new key. Also when
    the copy has another ETag (a source uploaded in parts) and when a directory above moves.
    (Reads failed with ENOENT past what the kernel had cached.)"""
    from boto3.s3.transfer import TransferConfig

    size, at = 40 * 1024 * 1024, 30 * 1024 * 1024
    parts = os.urandom(size)
    s3.upload_fileobj(io.BytesIO(parts), bucket, "parts",
                      Config=TransferConfig(multipart_threshold=8 * 1024 * 1024,
                                            multipart_chunksize=8 * 1024 * 1024))
    assert "-" in s3.head_object(Bucket=bucket, Key="parts")["ETag"]
    whole = os.urandom(size)
    s3.put_object(Bucket=bucket, Key="d/whole", Body=whole)
    m = mounter(bucket)
    for path, moves, new, data in [("parts", ("parts", "moved"), "moved", parts),
                                   ("d/whole", ("d", "e"), "e/whole", whole)]:
        with open(m.path / path, "rb") as f:
            assert f.read(4096) == data[:4096]
            os.rename(m.path / moves[0], m.path / moves[1])
            f.seek(at)
            assert f.read(65536) == data[at:at + 65536], path
        assert (m.path / new).stat().st_size == size
