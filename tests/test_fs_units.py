"""Unit tests of pure pieces of the filesystem: path<->key mapping, metadata, the read-ahead."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from s3mount.credentials.refresher import Refresher
from s3mount.credentials.static import StaticProvider
from s3mount.errors import FsError
from s3mount.fs.attrs import (
    Defaults,
    acl_mode,
    attrs_from_object,
    decode_xattrs,
    encode_xattrs,
    format_time_ns,
    metadata_for,
    parse_mode,
    parse_time_ns,
)
from s3mount.fs.budget import Budget
from s3mount.fs.paths import KeyMapper, decode_name
from s3mount.fs.reader import MIN_PART, MiB, Reader
from s3mount.fs.staging import Record, StagingArea
from s3mount.mount import MountRunner, MountSpec, Prepared
from s3mount.options import MountOptions
from s3mount.store.base import KeySet
from s3mount.store.s3 import S3Store, StoreConfig


def test_key_mapping_with_prefix() -> None:
    k = KeyMapper("/team/data/")
    assert k.file_key("a/b") == "team/data/a/b"
    assert k.dir_prefix("") == "team/data/"
    assert k.dir_prefix("a") == "team/data/a/"
    assert k.child_name("team/data/", "team/data/x") == "x"
    assert k.child_name("team/data/", "team/data/sub/") == "sub"
    assert k.child_name("team/data/", "team/data/") is None  # the directory's own marker
    for odd in ("team/data//x", "team/data/./", "team/data/../", "team/data/" + "n" * 256):
        assert k.child_name("team/data/", odd) is None


def test_names() -> None:
    assert decode_name("na\u00efve".encode()) == "na\u00efve"
    for raw, code in ((b"\xff", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG),
                      (b"a/b", errno.EINVAL)):
        with pytest.raises(FsError) as e:
            decode_name(raw)
        assert e.value.errno == code
    with pytest.raises(FsError) as e:
        KeyMapper("").check_length("d/" * 600 + "f")
    assert e.value.errno == errno.ENAMETOOLONG


@pytest.mark.parametrize("value,mode", [
    ("33188", 0o100644),     # s3fs: decimal with type bits
    ("16877", 0o40755),      # s3fs directory
    ("4516", 0o10644),       # s3fs FIFO
    ("8592", 0o20620),       # s3fs character device
    ("100640", 0o100640),    # rclone: octal
    ("0644", 0o644),         # octal permission bits only
    ("420", 420),            # decimal permission bits only (0o644)
    ("garbage", None),
    ("", None),
])
def test_parse_mode(value: str, mode: int | None) -> None:
    assert parse_mode(value) == mode


def test_metadata_roundtrip_and_defaults() -> None:
    d = Defaults(uid=7, gid=8, file_mode=0o640, dir_mode=0o750)
    a = attrs_from_object(kind=stat.S_IFREG, size=3, last_modified=1000.5, metadata=None,
                          defaults=d)
    assert (a.mode, a.uid, a.gid, a.mtime_ns) == (0o100640, 7, 8, 1000_500_000_000)
    md = metadata_for(a)
    assert md["mode"] == str(0o100640) and md["mtime"] == "1000.500000000"
    b = attrs_from_object(kind=stat.S_IFREG, size=3, last_modified=5.0, metadata=md, defaults=d)
    assert b == a
    link = attrs_from_object(kind=stat.S_IFREG, size=1, last_modified=0,
                             metadata={"mode": str(stat.S_IFLNK | 0o777)}, defaults=d)
    assert stat.S_ISLNK(link.mode)
    assert format_time_ns(1_000_000_000) == "1"


@pytest.mark.parametrize("ns,text", [
    (0, "0"),
    (-500_000_000, "-1.500000000"),  # s3fs's timespec: tv_sec, then tv_nsec after it
    (-1_000_000_000, "-1"),
    (2**33 * 1_000_000_000 + 7, "8589934592.000000007"),  # past 2038
])
def test_times_round_trip(ns: int, text: str) -> None:
    assert format_time_ns(ns) == text and parse_time_ns(text) == ns


def test_special_files_and_atime_in_metadata() -> None:
    d = Defaults(uid=0, gid=0)
    md = {"mode": str(stat.S_IFBLK | 0o600), "rdev": "2049", "mtime": "0", "atime": "-3"}
    a = attrs_from_object(kind=stat.S_IFREG, size=0, last_modified=99.0, metadata=md, defaults=d)
    assert (stat.S_ISBLK(a.mode), a.rdev, a.mtime_ns, a.atime_ns) == (True, 2049, 0, -3 * 10**9)
    assert metadata_for(a)["rdev"] == "2049" and metadata_for(a)["atime"] == "-3"
    # A directory object is a directory whatever its mode says.
    b = attrs_from_object(kind=stat.S_IFDIR, size=0, last_modified=0, metadata=md, defaults=d)
    assert stat.S_ISDIR(b.mode) and b.rdev == 0


def test_xattr_format_is_s3fs() -> None:
    x = {"user.a": b"\x00\xffbin", "user.b": b""}
    assert decode_xattrs(encode_xattrs(x)) == x
    assert encode_xattrs({"user.c": b"red"}) == "%7B%22user.c%22%3A%22cmVk%22%7D"
    assert decode_xattrs('{"user.c":"cmVk"}') == {"user.c": b"red"}  # not escaped: read too
    for junk in ("%7B", "[1]", '{"user.c":"***"}', None):
        assert decode_xattrs(junk) == {}


def _acl(*entries: tuple[int, int]) -> bytes:
    return (2).to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + (2**32 - 1).to_bytes(4, "little")
        for tag, perm in entries)


def test_access_acl_gives_mode() -> None:
    """What ``cp -a`` sets (u::rw- g::--- o::r--) is a mode; a mask stands for the group bits."""
    assert acl_mode(_acl((1, 6), (4, 0), (0x20, 4))) == (0o604, False)
    assert acl_mode(_acl((1, 7), (2, 5), (4, 7), (0x10, 5), (0x20, 0))) == (0o750, True)
    assert acl_mode(b"\x02\x00\x00\x00") is None  # no entries
    assert acl_mode(_acl((1, 6), (0x20, 4))) is None  # no group entry
    assert acl_mode(b"junk") is None


class FakeObject:
    """A fetch function over bytes that records every range asked for."""

    def __init__(self, size: int) -> None:
        self.data = (bytes(range(251)) * (size // 251 + 1))[:size]
        self.calls: list[tuple[int, int]] = []

    async def fetch(self, start: int, length: int) -> bytes:
        self.calls.append((start, length))
        await trio.sleep(0)
        return self.data[start:start + length]


def _run_reads(size: int, reads: list[tuple[int, int]],
               budget: Budget | None = None) -> FakeObject:
    obj = FakeObject(size)
    budget = budget or Budget(64 * MiB)

    async def main() -> None:
        async with trio.open_nursery() as n:
            r = Reader(obj.fetch, size, n, budget, part_size=2 * MiB, max_window=8 * MiB)
            for off, ln in reads:
                assert await r.read(off, ln) == obj.data[off:off + ln]
            r.close()

    trio.run(main)
    assert budget.used == 0  # everything taken was given back at close
    return obj


def test_sequential_reads_prefetch_in_growing_whole_parts() -> None:
    size = 40 * MiB
    obj = _run_reads(size, [(o, 128 * 1024) for o in range(0, size, 128 * 1024)])
    assert sum(ln for _, ln in obj.calls) == size  # nothing fetched twice
    assert len(obj.calls) < 40  # parts, not one request per kernel read
    assert max(ln for _, ln in obj.calls) == 2 * MiB


def test_random_reads_fetch_only_what_is_asked() -> None:
    size = 40 * MiB
    reads = [(37 * MiB, 4096), (3 * MiB, 4096), (20 * MiB, 8192), (11 * MiB, 100)]
    obj = _run_reads(size, reads)
    assert sorted(obj.calls) == sorted(reads)


def test_readers_share_one_read_budget() -> None:
    """Three files read side by side, with room for one part between them: every byte arrives,
    the budget is never overdrawn beyond the ranges being read, and all of it comes back."""
    size, kernel_read = 12 * MiB, 128 * 1024
    budget = Budget(2 * MiB)
    objs = [FakeObject(size) for _ in range(3)]
    peak = 0

    async def read_all(n: trio.Nursery, obj: FakeObject) -> None:
        nonlocal peak
        r = Reader(obj.fetch, size, n, budget, part_size=2 * MiB, max_window=8 * MiB)
        for off in range(0, size, kernel_read):
            assert await r.read(off, kernel_read) == obj.data[off:off + kernel_read]
            peak = max(peak, budget.used)
        r.close()

    async def main() -> None:
        async with trio.open_nursery() as n, trio.open_nursery() as readers:
            for obj in objs:
                readers.start_soon(read_all, n, obj)

    trio.run(main)
    assert budget.used == 0
    # Beyond the budget, at most what each reader is reading right now (one part each).
    assert peak <= budget.limit + 3 * MIN_PART
    for obj in objs:
        assert sum(ln for _, ln in obj.calls) == size  # nothing fetched twice, either


def test_a_spent_read_budget_means_no_prefetch() -> None:
    """With nothing free, a sequential reader fetches just the ranges asked for (at least
    MIN_PART at a time), and gives them back."""
    reads = [(o, 128 * 1024) for o in range(0, 4 * MiB, 128 * 1024)]
    obj = _run_reads(40 * MiB, reads, budget=Budget(0))  # all of it held elsewhere
    assert max(ln for _, ln in obj.calls) == MIN_PART
    assert sum(ln for _, ln in obj.calls) == 4 * MiB


def test_read_budget_is_shared_evenly_among_its_holders() -> None:
    budget = Budget(8)
    assert budget.take_up_to("a", 2, least=1) == 2
    assert budget.take_up_to("b", 8, least=1) == 4  # half each while both hold some
    assert budget.take_up_to("a", 8, least=1) == 2  # a's half, less what it holds
    assert budget.take_up_to("c", 8, least=2) == 0  # nothing free
    budget.give(2, "a")
    assert budget.take_up_to("c", 8, least=1) == 2  # a third each, now: 8 // 3, all free
    budget.give(2, "a")  # a holds nothing now: halves again
    assert budget.take_up_to("c", 8, least=1) == 2
    budget.give(4, "b")
    budget.give(4, "c")
    assert budget.used == 0 and budget.take_up_to("c", 8, least=1) == 8


def test_upload_budget_waits_and_lets_a_big_request_through() -> None:
    budget = Budget(10)
    order: list[str] = []

    async def main() -> None:
        await budget.take(6)
        async with trio.open_nursery() as n:
            async def second() -> None:
                await budget.take(6)  # must wait for the first to be given back
                order.append("second")

            async def huge() -> None:
                await budget.take(50)  # larger than the budget: waits until nothing is held
                order.append("huge")
                budget.give(50)

            n.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert order == [] and budget.used == 6
            order.append("first")
            budget.give(6)
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["first", "second"]
            n.start_soon(huge)
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["first", "second"]
            budget.give(6)
        assert order == ["first", "second", "huge"] and budget.used == 0
        assert budget.take_up_to("r1", 20, least=4) == 10
        assert budget.take_up_to("r2", 1, least=1) == 0

    trio.run(main)


def test_small_object_is_one_get() -> None:
    obj = _run_reads(300_000, [(0, 4096), (4096, 4096), (200_000, 100_000)])
    assert obj.calls == [(0, 300_000)]


def test_a_dropped_record_leaves_nothing_to_recover(tmp_path) -> None:
    """A staging file whose record was dropped (its data is stored) is deleted by the next run,
    not uploaded; one with a dirty record is handed back to be uploaded."""
    area = StagingArea(str(tmp_path))
    owed, stored = area.new(), area.new()
    for f, key in ((owed, "owed"), (stored, "stored")):
        f.pwrite(key.encode(), 0)
        f.save_record(Record(key, {}, None))
        f.close()
    stored.drop_record()
    area.close()
    again = StagingArea(str(tmp_path))
    try:
        left = list(again.leftovers())
        assert [(r.key, f.pread(10, 0)) for f, r in left] == [("owed", b"owed")]
        names = sorted(n for n in os.listdir(again.dir) if n != ".lock")
        assert names == [owed.name + ".data", owed.name + ".json"]
    finally:
        for f, _ in left:
            f.close()
        again.close()


def test_store_calls_in_flight_follow_the_connection_pool(tmp_path: Path) -> None:
    """The core lets as many store calls run at once as the store has connections: one setting
    (the store's pool) decides both, so changing it cannot leave threads waiting on the pool or
    connections idle."""
    keys = KeySet("AKIDEXAMPLE", "secret")
    store = S3Store(StoreConfig(bucket="b", endpoint_url="http://127.0.0.1:9",
                                max_pool_connections=5), Refresher(StaticProvider(keys)))
    spec = MountSpec("b", "", str(tmp_path), StaticProvider(keys),
                     MountOptions(cache_dir=str(tmp_path / "cache")))
    runner = MountRunner(Prepared(spec, Refresher(StaticProvider(keys)), store, keys, "b"))
    try:
        assert runner.fs.runner.limiter.total_tokens == 5
    finally:
        runner.staging.close()
        runner.meta.close()
