"""What common reads cost in S3 requests, counted by the proxy between a real mount and the sandbox.

bench/ measures time on radosgw; the time of metadata-bound work follows from the number of
requests, which these tests pin (the kinds are the proxy's: ``req GET``, ``req LIST``...).
"""

from __future__ import annotations

import os
import random
import subprocess
import time

from mountlib import Mounter

from s3mount.sandbox.faultproxy import FaultProxy


def _requests(proxy: FaultProxy) -> dict[str, int]:
    return {k[4:]: n for k, n in proxy.stats().items() if k.startswith("req ")}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def test_small_files_read_by_name_cost_one_get_then_nothing(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """``cat`` of small files another tool wrote: one LIST answers the lookups in their
    directory, and one GET per file brings its metadata and its data together. Reading them
    again while nothing changed costs no request: the kernel keeps their pages."""
    rng = random.Random(7)
    files = {f"src/f{i}.txt": rng.randbytes(4096 + i) for i in range(5)}
    for key, data in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    m = pmounter(bucket, "attr_timeout=300", "dir_timeout=300")  # nothing expires in the test
    (m.path / "src").stat()
    before = _requests(proxy)
    for key, data in files.items():
        assert (m.path / key).read_bytes() == data
    assert _delta(_requests(proxy), before) == {"LIST": 1, "GET": len(files)}
    # What the reads learnt is published in the shared index once it has settled (2 s): wait
    # for that, so that the count below does not depend on whether it falls within it (it
    # did, on a machine slow enough to take 2 s over the reads).
    deadline = time.monotonic() + 30
    while not s3.list_objects_v2(Bucket=bucket, Prefix=".s3mount/index/").get("Contents"):
        assert time.monotonic() < deadline, "what the reads learnt was never published"
        time.sleep(0.2)
    before = _requests(proxy)
    for _ in range(3):
        for key, data in files.items():
            assert (m.path / key).read_bytes() == data
    assert _delta(_requests(proxy), before) == {}
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys - set(files) <= {k for k in keys if k.startswith(".s3mount/index/")}
    assert {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in files} == files
    # reading changed no file (what it learnt is published in the shared index)


def test_kept_pages_give_way_to_a_new_version(pmounter: Mounter, bucket: str, s3) -> None:
    """A file replaced behind the mount's back (same size, so only the ETag tells) reads as the
    new version once the mount's attributes expire (dir_timeout, attr_timeout: 1 s), although
    the kernel held the old one's pages."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"A" * 5000)
    m = pmounter(bucket)
    assert (m.path / "f").read_bytes() == b"A" * 5000
    assert (m.path / "f").read_bytes() == b"A" * 5000
    s3.put_object(Bucket=bucket, Key="f", Body=b"B" * 5000)
    time.sleep(1.5)
    assert (m.path / "f").read_bytes() == b"B" * 5000
    assert (m.path / "f").read_bytes() == b"B" * 5000


def _foreign(s3, bucket: str, n: int, prefix: str = "d/") -> None:
    for i in range(n):
        s3.put_object(Bucket=bucket, Key=f"{prefix}f{i:03d}", Body=b"x" * (i + 1),
                      Metadata={"mode": "33152", "uid": "4242"})  # 0o100600


def _ls_l(path) -> list[str]:
    """``ls -ln`` of ``path``: "mode uid gid name" per entry."""
    lines = subprocess.run(["ls", "-ln", str(path)], capture_output=True, text=True, timeout=60,
                           check=True).stdout.splitlines()[1:]
    return [" ".join(f[i] for i in (0, 2, 3, 8)) for f in (line.split() for line in lines)]


def test_names_only_listing_costs_lists_and_ls_l_waits_for_metadata(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """``ls | wc -l`` (names only) of foreign objects costs LISTs and no HEAD; ``ls -l`` then
    fetches each file's metadata once (batched) and shows the stored mode and owner, not the
    listing's guess: the names-only reply did not pin wrong attributes in the kernel."""
    n = 40
    _foreign(s3, bucket, n)
    m = pmounter(bucket, "attr_timeout=300", "dir_timeout=300", "no_shared_index")
    (m.path / "d").stat()
    before = _requests(proxy)
    names = sorted(p.name for p in (m.path / "d").iterdir())
    assert names == [f"f{i:03d}" for i in range(n)]
    assert set(_delta(_requests(proxy), before)) == {"LIST"}
    before = _requests(proxy)
    out = _ls_l(m.path / "d")
    assert len(out) == n
    assert all(line.startswith("-rw------- 4242 ") for line in out), out[:3]
    cost = _delta(_requests(proxy), before)
    assert cost.get("HEAD", 0) + cost.get("GET", 0) == n and cost.get("LIST", 0) <= 1, cost


def test_names_only_listing_reads_the_shared_index_once(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """With the shared index on, ``ls`` (names only) of foreign objects no cache describes costs
    its LIST and one GET (the directory's index, to send what it knows with the names; absent
    here); listing again soon costs the LIST only (a directory without an index is not asked
    again for 30 s)."""
    _foreign(s3, bucket, 40)
    m = pmounter(bucket, "attr_timeout=300", "dir_timeout=300")
    (m.path / "d").stat()
    for cost in ({"LIST": 1, "GET": 1}, {"LIST": 1}):
        before = _requests(proxy)
        assert len(list((m.path / "d").iterdir())) == 40
        assert _delta(_requests(proxy), before) == cost


def _write_through(m, n: int, d: str = "d") -> None:
    (m.path / d).mkdir()
    for i in range(n):
        fd = os.open(m.path / d / f"f{i:03d}", os.O_CREAT | os.O_WRONLY, 0o640)
        os.write(fd, b"y" * i)
        os.close(fd)


def test_second_mount_ls_l_reads_the_shared_index_instead_of_heads(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3, tmp_path) -> None:
    """Files written through one mount are published in the shared index (at unmount at the
    latest): ``ls -l`` from a second mount with an empty cache dir costs a LIST and the index
    read, and no HEAD, and shows the attributes the first mount wrote."""
    n = 150
    a = pmounter(bucket)
    _write_through(a, n)
    a.unmount()
    b = pmounter(bucket, "attr_timeout=300", "dir_timeout=300", cache_dir=tmp_path / "fresh")
    (b.path / "d").stat()
    before = _requests(proxy)
    out = _ls_l(b.path / "d")
    assert len(out) == n
    assert all(line.startswith("-rw-r----- 0 ") for line in out), out[:3]
    assert _delta(_requests(proxy), before) == {"LIST": 1, "GET": 1}
