"""The shared attribute index (s3mount/fs/sharedindex.py) on real mounts: what it never gets
wrong (a replaced object, a corrupt index), where it lives (hidden, unwritable through the
mount), and who writes it (rw mounts after changes settle; never ``ro`` or ``no_shared_index``).
Request counts are the fault proxy's, as in test_request_costs."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest
from mountlib import Mounter

from s3mount.sandbox.faultproxy import Fault, FaultProxy

INDEX = ".s3mount/index/"


def _requests(proxy: FaultProxy) -> dict[str, int]:
    return {k[4:]: n for k, n in proxy.stats().items() if k.startswith("req ")}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def _ls_l(path) -> list[str]:
    """``ls -ln`` of ``path``: "mode uid gid name" per entry."""
    lines = subprocess.run(["ls", "-ln", str(path)], capture_output=True, text=True, timeout=60,
                           check=True).stdout.splitlines()[1:]
    return [" ".join(f[i] for i in (0, 2, 3, 8)) for f in (line.split() for line in lines)]


def _index_keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=INDEX).get("Contents", [])]


def _written(mounter: Mounter, bucket: str, n: int = 12) -> None:
    """``n`` files of mode 0640 in d/, written through a mount that is then unmounted."""
    m = mounter(bucket)
    (m.path / "d").mkdir()
    for i in range(n):
        fd = os.open(m.path / "d" / f"f{i:02d}", os.O_CREAT | os.O_WRONLY, 0o640)
        os.write(fd, b"z" * i)
        os.close(fd)
    m.unmount()


def test_replaced_object_costs_a_head_and_shows_its_own_attributes(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3, tmp_path) -> None:
    _written(pmounter, bucket)
    s3.put_object(Bucket=bucket, Key="d/f05", Body=b"new", Metadata={"mode": "33188",
                                                                      "uid": "777"})
    m = pmounter(bucket, "attr_timeout=300", "dir_timeout=300", cache_dir=tmp_path / "c2")
    (m.path / "d").stat()
    before = _requests(proxy)
    lines = {line.split()[-1]: line for line in _ls_l(m.path / "d")}
    assert lines["f05"].startswith("-rw-r--r-- 777 "), lines["f05"]
    assert all(v.startswith("-rw-r----- 0 ") for k, v in lines.items() if k != "f05"), lines
    cost = _delta(_requests(proxy), before)
    assert cost.get("HEAD", 0) + cost.get("GET", 0) == 2, cost  # the index, and f05


def test_corrupt_index_is_ignored_with_one_log_line(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3, tmp_path) -> None:
    _written(pmounter, bucket)
    (key,) = _index_keys(s3, bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"v": 1, "entries": [')
    m = pmounter(bucket, cache_dir=tmp_path / "c2")
    for _ in range(2):
        out = _ls_l(m.path / "d")
        assert len(out) == 12 and all(line.startswith("-rw-r----- 0 ") for line in out)
        time.sleep(1.1)  # the listing expires: the index is read again
    assert m.log().count("ignoring the shared index") == 1, m.log()


def test_index_prefix_is_hidden_and_cannot_be_changed_through_the_mount(
        mounter: Mounter, bucket: str, s3) -> None:
    _written(mounter, bucket, 3)
    keys = _index_keys(s3, bucket)
    assert keys
    m = mounter(bucket)
    assert os.listdir(m.path) == ["d"]
    ls_a = subprocess.run(["ls", "-a", str(m.path)], capture_output=True, text=True, timeout=30,
                          check=True).stdout.split()
    assert ".s3mount" not in ls_a
    assert not (m.path / ".s3mount").exists()
    for make in (os.mkdir, lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)),
                 lambda p: os.rename(m.path / "d", p)):
        with pytest.raises(PermissionError):
            make(m.path / ".s3mount")
    with pytest.raises(FileNotFoundError):
        os.rmdir(m.path / ".s3mount")
    subprocess.run(["rm", "-rf", str(m.path / ".s3mount")], timeout=30, check=True)
    assert _index_keys(s3, bucket) == keys


def test_rw_mount_publishes_after_changes_settle_ro_and_no_shared_index_never(
        mounter: Mounter, bucket: str, s3, tmp_path) -> None:
    s3.put_object(Bucket=bucket, Key="ro/x", Body=b"x", Metadata={"mode": "33216"})
    for opts in (("ro",), ("no_shared_index",)):
        m = mounter(bucket, *opts, cache_dir=tmp_path / opts[0])
        assert _ls_l(m.path / "ro")[0].startswith("-rwx------")  # a HEAD learnt it
        m.unmount()
    assert _index_keys(s3, bucket) == []
    m = mounter(bucket)
    (m.path / "w").mkdir()
    (m.path / "w" / "f").write_bytes(b"data")
    assert _ls_l(m.path / "ro")[0].startswith("-rwx------")
    deadline = time.monotonic() + 15
    while len(_index_keys(s3, bucket)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_index_keys(s3, bucket)) == 2  # w/ (our file) and ro/ (a foreign one we HEADed)
    with pytest.raises(OSError) as exc:
        os.stat(m.path / ".s3mount" / "index")
    assert exc.value.errno == errno.ENOENT


def test_index_the_server_refuses_costs_heads_never_attributes(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3, tmp_path) -> None:
    """Every request for the index fails (500): ``ls -l`` shows the right attributes by HEADs,
    publishing gives up with a warning, and the mount unmounts normally."""
    _written(pmounter, bucket)
    proxy.set_faults([Fault("internal", probability=1.0, path=r"/\.s3mount/index/")])
    m = pmounter(bucket, "timeout=5", cache_dir=tmp_path / "c2")
    out = _ls_l(m.path / "d")
    assert len(out) == 12 and all(line.startswith("-rw-r----- 0 ") for line in out), out
    assert proxy.stats().get("req HEAD", 0) >= 11
    m.unmount()  # publishing what the HEADs learnt fails: logged, not fatal
    assert "could not read the shared index" in m.log()
    assert "could not publish the shared index" in m.log()
