"""Issue #16 item 8: ``-o timeout=`` is a bound on every operation, measured from its own start,
however many operations are waiting on a server that says nothing.

The fault proxy holds every answer back (a server that accepts requests and then is silent); the
tests start several different operations at once and time each one.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mountlib import S3MOUNT, Mounter, run

from s3mount.sandbox.faultproxy import Fault, FaultProxy

TIMEOUT = 4.0
MARGIN = 1.5
"""What an operation may take past ``timeout``: the kernel's and our own hand-offs."""
SILENT = [Fault("delay", probability=1.0, delay=120)]


def _timed(ops: dict[str, Callable[[], object]]) -> dict[str, tuple[float, BaseException | None]]:
    """Run every op at once in its own thread: {name: (seconds from its own start, error)}."""
    out: dict[str, tuple[float, BaseException | None]] = {}
    barrier = threading.Barrier(len(ops))

    def one(name: str, op: Callable[[], object]) -> None:
        barrier.wait()
        started = time.monotonic()
        err: BaseException | None = None
        try:
            op()
        except BaseException as exc:  # noqa: BLE001 - the error is the result
            err = exc
        out[name] = (time.monotonic() - started, err)

    threads = [threading.Thread(target=one, args=item, daemon=True) for item in ops.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(out) == len(ops), f"operations still blocked after 120 s: {set(ops) - set(out)}"
    return out


def _write(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(b"x" * 1000)


def test_operations_at_once_each_end_within_the_timeout(pmounter: Mounter, proxy: FaultProxy,
                                                        bucket: str, s3) -> None:
    big = os.urandom(200_000)  # above the size a lookup fetches whole, so reads need a GET
    # More readers than the mount has worker threads for store calls (32): those queued behind
    # the others must end in time all the same.
    files = [f"f{i:02d}" for i in range(40)]
    for name in files:
        s3.put_object(Bucket=bucket, Key=name, Body=big)
    s3.put_object(Bucket=bucket, Key="sub/inner", Body=b"x")
    # Long attribute and listing timeouts: the names are known, so what needs the server is
    # exactly the data (GET), the new file (PUT at close) and the names not seen yet.
    m = pmounter(bucket, f"timeout={TIMEOUT:g}", "attr_timeout=600", "dir_timeout=600",
                 "neg_timeout=0")
    assert sorted(os.listdir(m.path)) == [*files, "sub"]
    for name in files:
        os.stat(m.path / name)
    proxy.set_faults(SILENT)
    ops: dict[str, Callable[[], object]] = {
        **{f"read {n}": (lambda n=n: (m.path / n).read_bytes()) for n in files},
        "ls sub": lambda: os.listdir(m.path / "sub"),
        "stat sub/missing": lambda: os.stat(m.path / "sub" / "missing"),
        "write new": lambda: _write(m.path / "new"),
    }
    results = _timed(ops)
    proxy.clear()
    late = {name: round(t, 1) for name, (t, _) in results.items() if t > TIMEOUT + MARGIN}
    assert not late, f"past timeout={TIMEOUT:g} s + {MARGIN} s: {late}"
    for name, (_, err) in results.items():
        assert isinstance(err, OSError) and err.errno == errno.EIO, (name, err)
    # The server back, the same mount works and the refused write arrives later.
    assert (m.path / "f00").read_bytes() == big


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_timeout_must_be_a_positive_number(mounter: Mounter, bucket: str, tmp_path: Path,
                                           value: str) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    r = run([*S3MOUNT, "mount", f"s3://{bucket}", str(mp), "-o", f"timeout={value}"],
            check=False, timeout=60)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "timeout" in r.stderr, r.stderr
    assert not os.path.ismount(mp)


def test_lookups_of_new_names_at_once_each_end_within_the_timeout(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """Ten names nobody has seen, looked up at once in one directory whose listing is not
    cached (a shell's `stat`s, a build's probes): each needs the server, and each fails on its
    own within the timeout, not one after another."""
    s3.put_object(Bucket=bucket, Key="d/known", Body=b"x")
    m = pmounter(bucket, f"timeout={TIMEOUT:g}", "dir_timeout=0")
    assert os.listdir(m.path) == ["d"]
    proxy.set_faults(SILENT)
    results = _timed({f"stat d/new{i}": (lambda i=i: os.stat(m.path / "d" / f"new{i}"))
                      for i in range(10)})
    for name, (_, err) in results.items():
        assert isinstance(err, OSError) and err.errno == errno.EIO, (name, err)
    slowest = max(took for took, _ in results.values())
    assert slowest < TIMEOUT + MARGIN, sorted(round(t, 1) for t, _ in results.values())


def test_lookups_of_new_names_in_a_known_directory_each_end_within_the_timeout(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """The directory's own entry still cached, its listing not: the kernel sends the lookups of
    the new names straight to the mount, all at once (libfuse built by .ci/build-libfuse passes
    FUSE_PARALLEL_DIROPS; with Debian's they came one at a time and ended at 4, 8, ... 20 s)."""
    s3.put_object(Bucket=bucket, Key="d/known", Body=b"x")
    m = pmounter(bucket, f"timeout={TIMEOUT:g}", "dir_timeout=0", "attr_timeout=600",
                 "neg_timeout=0")
    os.stat(m.path / "d")
    proxy.set_faults(SILENT)
    results = _timed({f"stat d/new{i}": (lambda i=i: os.stat(m.path / "d" / f"new{i}"))
                      for i in range(6)})
    for name, (_, err) in results.items():
        assert isinstance(err, OSError) and err.errno == errno.EIO, (name, err)
    slowest = max(took for took, _ in results.values())
    assert slowest < TIMEOUT + MARGIN, sorted(round(t, 1) for t, _ in results.values())


def test_lookups_in_one_directory_reach_the_server_together(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """Eight programs stat()ing eight files of one directory: each lookup's request is at the
    server while the others' are (held there until all eight are), not one after another."""
    names = [f"d/f{i}" for i in range(8)]
    for key in names:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    m = pmounter(bucket, "timeout=120", "dir_timeout=0", "attr_timeout=600")
    os.stat(m.path / "d")
    proxy.set_faults([Fault("hold", count=len(names))])
    sizes: dict[str, int] = {}
    threads = [threading.Thread(target=lambda k=k: sizes.update({k: os.stat(m.path / k).st_size}),
                                daemon=True) for k in names]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while proxy.stats().get("hold", 0) < len(names):
            assert time.monotonic() < deadline, \
                f"requests at the server together: {proxy.stats().get('hold', 0)} of {len(names)}"
            time.sleep(0.1)
    finally:
        proxy.release()
        for t in threads:
            t.join(60)
    assert sizes == {k: len(k) for k in names}


def test_a_server_answering_byte_by_byte_ends_within_the_timeout(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """A slowloris server: every answer comes a byte at a time, so no single read of it ever
    waits long, yet it never ends. Each operation still ends within ``timeout`` of its start
    (each wait for a byte bounded alone, an answer took as long as the server liked)."""
    files = [f"f{i}" for i in range(6)]
    for name in files:
        s3.put_object(Bucket=bucket, Key=name, Body=os.urandom(200_000))
    m = pmounter(bucket, f"timeout={TIMEOUT:g}", "attr_timeout=600", "dir_timeout=600")
    assert sorted(os.listdir(m.path)) == files
    for name in files:
        os.stat(m.path / name)
    proxy.set_faults([Fault("dribble", probability=1.0, delay=0.3)])
    results = _timed({
        **{f"read {n}": (lambda n=n: (m.path / n).read_bytes()) for n in files},
        "write new": lambda: _write(m.path / "new"),
    })
    proxy.clear()
    late = {name: round(t, 1) for name, (t, _) in results.items() if t > TIMEOUT + MARGIN}
    assert not late, f"past timeout={TIMEOUT:g} s + {MARGIN} s: {late}"
    for name, (_, err) in results.items():
        assert isinstance(err, OSError) and err.errno == errno.EIO, (name, err)
