"""What common reads cost in S3 requests, counted by the proxy between a real mount and the sandbox.

bench/ measures time on radosgw; the time of metadata-bound work follows from the number of
requests, which these tests pin (the kinds are the proxy's: ``req GET``, ``req LIST``...).
"""

from __future__ import annotations

import random
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
    before = _requests(proxy)
    for _ in range(3):
        for key, data in files.items():
            assert (m.path / key).read_bytes() == data
    assert _delta(_requests(proxy), before) == {}
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == set(files)  # reading wrote nothing


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
