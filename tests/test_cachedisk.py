"""Issue #16 items 2 and 7, issue #17 item 5: the staging area's space, on real mounts.

The cache directory sits on a small tmpfs mounted by the test (and unmounted in its teardown), so
a full disk is a real full disk; the bucket is checked behind the mount's back with boto3.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mountlib import Mounter, run

from s3mount.sandbox.faultproxy import Fault

MiB = 1024 * 1024
DISK_MIB = 32


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs for the cache directory."""
    d = tmp_path / "small-disk"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(d)],
                   check=True, timeout=30)
    try:
        yield d
    finally:
        # The mounter's teardown (which unmounts the FUSE mounts) runs after this one when the
        # test asked for ``small_disk`` first; a lazy unmount never waits for it.
        subprocess.run(["umount", "-l", str(d)], check=False, timeout=30)


def staged_files(cache: Path, wait: float = 5.0) -> list[Path]:
    """Staging data files holding data, once the mount's RELEASEs (which the kernel sends after
    close() returns) had ``wait`` seconds to arrive."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for p in cache.rglob("*.data"):
            with contextlib.suppress(FileNotFoundError):  # released meanwhile
                if p.stat().st_blocks:
                    found.append(p)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def used_mib(disk: Path) -> float:
    st = os.statvfs(disk)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / MiB


def test_full_cache_disk_is_enospc_and_keeps_the_object(small_disk: Path, mounter: Mounter,
                                                        bucket: str, s3) -> None:
    """A change that cannot be staged fails with ENOSPC; the object in the bucket stays as it
    was, the staging space is given back, and later writes work."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"original")
    m = mounter(bucket, "part_size=5", cache_dir=small_disk / "cache")
    chunk = os.urandom(MiB)
    fd = os.open(m.path / "f", os.O_WRONLY)
    failed = None
    try:
        for i in range(2 * DISK_MIB):  # not front to back: nothing streams, all must be staged
            os.pwrite(fd, chunk, (2 * DISK_MIB - 1 - i) * MiB)
    except OSError as exc:
        failed = exc.errno
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            failed = failed or exc.errno
    assert failed == errno.ENOSPC
    assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"original"
    assert (m.path / "f").read_bytes() == b"original"
    assert staged_files(small_disk) == []
    (m.path / "later").write_bytes(b"still works")
    assert s3.get_object(Bucket=bucket, Key="later")["Body"].read() == b"still works"
    # A new file none of which could be staged leaves nothing behind, neither object nor name.
    with pytest.raises(OSError) as exc, open(m.path / "new", "wb") as f:
        for i in range(2 * DISK_MIB):
            f.seek((2 * DISK_MIB - 1 - i) * MiB)
            f.write(chunk)
            f.flush()
    assert exc.value.errno == errno.ENOSPC
    assert "new" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    deadline = time.monotonic() + 5
    while "new" in os.listdir(m.path):
        assert time.monotonic() < deadline, "the name of a file never stored stays"
        time.sleep(0.2)
    assert staged_files(small_disk) == []
    assert "internal error" not in m.log()


class PeakUse:
    """Samples how much of a disk is used, from a thread, until stopped."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, used_mib(self.disk))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak


@pytest.mark.parametrize("cache_size", [None, 12])
def test_sequential_file_larger_than_the_cache_disk_streams(
        small_disk: Path, mounter: Mounter, bucket: str, s3, tmp_path: Path,
        cache_size: int | None) -> None:
    """dd of 3x the cache disk over an existing file: the parts the bucket has stored are given
    back to the disk, so the write succeeds; with cache_size, staging stays within it."""
    s3.put_object(Bucket=bucket, Key="big", Body=b"old version")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * DISK_MIB * MiB))
    options = ["part_size=5"] + ([f"cache_size={cache_size}"] if cache_size else [])
    m = mounter(bucket, *options, cache_dir=small_disk / "cache")
    peak = PeakUse(small_disk)
    run(["dd", f"if={src}", f"of={m.path / 'big'}", "bs=1M"], timeout=120)
    staged_peak = peak.stop()
    print(f"peak staged {staged_peak:.1f} MiB")
    body = s3.get_object(Bucket=bucket, Key="big")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert staged_files(small_disk) == []
    if cache_size:
        assert staged_peak <= cache_size + 1, f"{staged_peak:.1f} MiB staged at once"
    assert "internal error" not in m.log()


def test_ftruncate_of_an_open_file_is_stored_at_close_and_then_forgotten(mnt, s3,
                                                                        bucket: str) -> None:
    """open; ftruncate; close stores the file at close (not before), leaves nothing staged, and
    a later change by another S3 client shows through the mount."""
    s3.put_object(Bucket=bucket, Key="t", Body=b"0123456789")
    fd = os.open(mnt.path / "t", os.O_RDWR)
    try:
        os.ftruncate(fd, 4)
        assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == b"0123456789"
    finally:
        os.close(fd)
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == b"0123"
    assert staged_files(mnt.cache_dir) == []
    s3.put_object(Bucket=bucket, Key="t", Body=b"changed elsewhere")
    deadline = time.monotonic() + 10
    while True:
        try:
            if (mnt.path / "t").read_bytes() == b"changed elsewhere":
                break
        except OSError as exc:  # ESTALE while the replaced version's attributes are trusted
            assert exc.errno == errno.ESTALE
        assert time.monotonic() < deadline, "the change made in the bucket never showed"
        time.sleep(0.2)


def test_a_size_beyond_what_can_be_stored_is_efbig(mnt, s3, bucket: str) -> None:
    """truncate(1) to ~900 TB and a write past 5 TiB fail with EFBIG (not EIO); nothing
    changes in the bucket and the mount logs no internal error."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"kept")
    r = run(["truncate", "-s", "999999999999999", str(mnt.path / "f")], check=False)
    assert r.returncode != 0 and "File too large" in r.stderr
    fd = os.open(mnt.path / "g", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"x", 6 * 1024**4)
        assert exc.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    assert s3.get_object(Bucket=bucket, Key="f")["Body"].read() == b"kept"
    assert (mnt.path / "f").read_bytes() == b"kept"
    assert s3.get_object(Bucket=bucket, Key="g")["Body"].read() == b""
    assert "internal error" not in mnt.log()


def test_changing_a_file_larger_than_the_cache_disk_is_enospc(small_disk: Path, mounter: Mounter,
                                                              bucket: str, s3) -> None:
    """A change in place needs the whole file staged: one larger than the cache disk cannot be
    loaded, so the write fails with ENOSPC and the object stays whole in the bucket."""
    body = os.urandom((DISK_MIB + 8) * MiB)
    s3.put_object(Bucket=bucket, Key="large", Body=body)
    m = mounter(bucket, "part_size=5", cache_dir=small_disk / "cache")
    fd = os.open(m.path / "large", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"patch", 10)
        assert exc.value.errno == errno.ENOSPC
    finally:
        with pytest.raises(OSError):  # close() tells it too: nothing was stored
            os.close(fd)
    assert s3.get_object(Bucket=bucket, Key="large")["Body"].read() == body
    assert staged_files(small_disk) == []
    assert "internal error" not in m.log()


def test_a_file_larger_than_the_cache_can_only_be_appended_to(small_disk: Path, mounter: Mounter,
                                                              bucket: str, s3) -> None:
    """Once parts a stream has stored are given back to the disk, a write elsewhere is ENOSPC
    and a read of such a part EIO; what was written front to back is stored at close."""
    m = mounter(bucket, "part_size=5,cache_size=12", cache_dir=small_disk / "cache")
    data = os.urandom(2 * DISK_MIB * MiB)
    fd = os.open(m.path / "seq", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        for i in range(0, len(data), MiB):
            os.write(fd, data[i:i + MiB])
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"header", 0)
        assert exc.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as exc:
            os.pread(fd, 4096, 0)
        assert exc.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert s3.get_object(Bucket=bucket, Key="seq")["Body"].read() == data
    assert staged_files(small_disk) == []


def test_stream_beyond_the_cache_broken_by_an_outage_replaces_nothing(
        small_disk: Path, pmounter: Mounter, proxy, bucket: str, s3) -> None:
    """The parts given back to the disk cannot be uploaded again: when the server goes away
    under such a stream, the writer gets an error (at the latest from close) and the bucket
    keeps its version, whole; nothing stays staged and the mount goes on working."""
    s3.put_object(Bucket=bucket, Key="big", Body=b"old version")
    m = pmounter(bucket, "part_size=5,cache_size=12,timeout=3", cache_dir=small_disk / "cache")
    chunk = os.urandom(MiB)
    errors = []
    fd = os.open(m.path / "big", os.O_WRONLY | os.O_TRUNC)
    try:
        for i in range(40):
            if i == 25:
                proxy.set_down(True)
            try:
                os.write(fd, chunk)
            except OSError as exc:
                errors.append(exc.errno)
                break
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            errors.append(exc.errno)
    proxy.set_down(False)
    assert errors and set(errors) <= {errno.EIO, errno.ENOSPC}, errors
    assert staged_files(small_disk) == []
    (m.path / "after").write_bytes(b"works")
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"works"
    m.unmount()  # stores whatever is still owed: nothing of "big" may be
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == b"old version"
    assert "internal error" not in m.log()


@pytest.mark.parametrize("hold_open", [False, True], ids=["close-when-done", "all-open-at-once"])
def test_many_writers_on_a_small_cache_disk(small_disk: Path, mounter: Mounter, bucket: str,
                                            s3, hold_open: bool) -> None:
    """Fifty writers at once, each copying a 3 MiB file (below part_size: nothing streams)
    through a 32 MiB cache disk that cannot hold them all. Every file either arrives whole
    or its writer gets ENOSPC and the name disappears: none is left listed empty or short,
    in the mount or in the bucket, and nothing stays staged.

    With `hold_open` every writer keeps its file open until all have written, so the disk
    must fill (150 MiB of open files through 32 MiB); without it, files close as they are
    done and whether the disk fills depends on how fast uploads free it."""
    m = mounter(bucket, cache_dir=small_disk / "cache")
    body = {i: os.urandom(3 * MiB) for i in range(50)}
    failed: dict[int, int] = {}
    all_written = threading.Barrier(len(body))

    def write(i: int) -> None:
        try:
            with open(m.path / f"f{i:02d}", "wb") as f:
                try:
                    for at in range(0, len(body[i]), 256 * 1024):
                        f.write(body[i][at:at + 256 * 1024])
                        f.flush()
                finally:
                    if hold_open:
                        all_written.wait(timeout=90)
        except OSError as exc:
            failed[i] = exc.errno

    threads = [threading.Thread(target=write, args=(i,)) for i in body]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(failed.values()) <= {errno.ENOSPC}, failed
    assert len(failed) < len(body), "some files fit: not all may be refused"
    if hold_open:
        assert failed, "150 MiB of open files went through a 32 MiB disk"
    stored = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
              if not o["Key"].startswith(".s3mount/")}
    want = {f"f{i:02d}" for i in body if i not in failed}
    assert set(stored) == want
    for name in want:
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == body[int(name[1:])]
    deadline = time.monotonic() + 5
    while True:
        listed = {p.name: p.stat().st_size for p in m.path.iterdir()}
        if set(listed) == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert listed == {name: 3 * MiB for name in want}
    assert staged_files(small_disk) == []
    assert "internal error" not in m.log()


def test_a_writer_on_a_full_disk_waits_for_uploads_in_flight(
        small_disk: Path, pmounter: Mounter, proxy, bucket: str, s3) -> None:
    """A writer that finds the cache disk full waits (at most ``timeout``) for the staging
    space of files being stored after their close(): with the server slowed, a 20 MiB file
    is closed, and a second 20 MiB file, which the 32 MiB disk cannot hold beside it, is
    written whole once the first is stored. A writer that needs more than can ever be freed
    (40 MiB) still gets ENOSPC, within timeout + a margin."""
    timeout = 30
    m = pmounter(bucket, f"part_size=32,timeout={timeout}", cache_dir=small_disk / "cache")
    body = {name: os.urandom(20 * MiB) for name in ("a", "b", "c")}

    def slow_put_of(name: str) -> None:  # the answer to its PUT comes 3 s late (one attempt)
        proxy.set_faults([Fault("delay", count=1, delay=3.0, methods=("PUT",),
                                path=f"/{name}$")])

    def write_and_close(name: str, written: threading.Event) -> None:
        fd = os.open(m.path / name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, body[name])
            written.set()
        finally:
            os.close(fd)  # blocks while the PUT's answer is held back

    def closing_slowly(name: str) -> threading.Thread:
        slow_put_of(name)
        written = threading.Event()
        t = threading.Thread(target=write_and_close, args=(name, written))
        t.start()
        assert written.wait(timeout=60)
        time.sleep(0.5)  # into close(): the upload is under way
        return t

    first = closing_slowly("a")
    with open(m.path / "b", "wb") as f:  # front to back, below part_size: nothing streams
        for at in range(0, 20 * MiB, MiB):
            f.write(body["b"][at:at + MiB])
            f.flush()
    first.join(timeout=60)
    for name in ("a", "b"):
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == body[name]

    second = closing_slowly("c")
    started = time.monotonic()
    with pytest.raises(OSError) as exc, open(m.path / "big", "wb") as f:
        for i in range(40):  # not front to back: nothing streams, all must be staged
            f.seek((39 - i) * MiB)
            f.write(body["c"][:MiB])
            f.flush()
    assert exc.value.errno == errno.ENOSPC
    assert time.monotonic() - started < timeout + 5
    second.join(timeout=60)
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == body["c"]
    assert staged_files(small_disk) == []
