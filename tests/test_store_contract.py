"""The ``ObjectStore`` contract: one set of tests every store passes.

Each test runs on the in-memory store, on the fault wrapper around it with no fault set (it must
pass every call through unchanged), and on the S3 store against the sandbox S3 server, so the
memory store used by fast tests answers as a real server does: ETags (MD5; multipart
``md5-of-md5s-N``), ``LastModified``, metadata, listings with delimiter, ``start_after`` and
continuation tokens, If-Match, and the errors (NotFound, PreconditionFailed) with their errnos.
The fault wrapper's own behaviour is tested at the end.
"""

from __future__ import annotations

import errno
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3mount.credentials.refresher import Refresher
from s3mount.credentials.static import StaticProvider
from s3mount.errors import (
    AccessDenied,
    NotFound,
    PreconditionFailed,
    S3MountError,
    Unavailable,
)
from s3mount.sandbox.client import SandboxProcess
from s3mount.store.base import ObjectStore
from s3mount.store.faulty import FaultyStore
from s3mount.store.memory import MemoryStore
from s3mount.store.s3 import S3Store, StoreConfig

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part but the last; the stores' multipart threshold here


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(*parts: bytes) -> str:
    return f"{md5(b''.join(bytes.fromhex(md5(p)) for p in parts))}-{len(parts)}"


@pytest.fixture(params=["memory", "faulty", "s3"])
def store(request: pytest.FixtureRequest) -> Iterator[ObjectStore]:
    if request.param == "memory":
        yield MemoryStore(part_size=PART)
    elif request.param == "faulty":
        yield FaultyStore(MemoryStore(part_size=PART))
    else:
        sandbox: SandboxProcess = request.getfixturevalue("sandbox")
        bucket: str = request.getfixturevalue("bucket")
        keys = sandbox.issue_keys([bucket])
        yield S3Store(StoreConfig(bucket=bucket, endpoint_url=sandbox.url, region="us-east-1",
                                  timeout=20, part_size=PART), Refresher(StaticProvider(keys)))


def put(store: ObjectStore, key: str, data: bytes = b"x", **meta: str) -> str:
    return store.put(key, data, metadata=meta)


def listing(store: ObjectStore, prefix: str, **kw: Any) -> tuple[list[str], list[str]]:
    """All pages of a listing: (object keys, common prefixes), in the order they came."""
    keys: list[str] = []
    prefixes: list[str] = []
    token = None
    while True:
        page = store.list_page(prefix, token=token, **kw)
        keys += [o.key for o in page.objects]
        prefixes += page.prefixes
        if page.next_token is None:
            return keys, prefixes
        token = page.next_token


def test_check(store: ObjectStore) -> None:
    store.check()


def test_put_then_head(store: ObjectStore) -> None:
    before = time.time()
    etag = store.put("dir/a.txt", b"hello", metadata={"Mode": "33188", "uid": "7"})
    after = time.time()
    assert etag == md5(b"hello")
    info = store.head("dir/a.txt")
    assert (info.key, info.size, info.etag) == ("dir/a.txt", 5, etag)
    assert info.metadata == {"mode": "33188", "uid": "7"}  # names in lower case
    assert info.content_type == "text/plain"  # guessed from the name when not given
    assert before - 1 <= info.last_modified <= after + 1
    store.put("b", b"", metadata={}, content_type="application/x-mine")
    empty = store.head("b")
    assert (empty.size, empty.etag, empty.metadata) == (0, md5(b""), {})
    assert empty.content_type == "application/x-mine"


def test_overwrite_moves_etag_and_if_match_fails(store: ObjectStore) -> None:
    old = put(store, "k", b"one")
    new = put(store, "k", b"two!")
    assert new != old and store.head("k").etag == new
    with pytest.raises(PreconditionFailed) as e:
        store.get_range("k", 0, 3, etag=old)
    assert e.value.errno == errno.ESTALE
    with pytest.raises(PreconditionFailed):
        store.download("k", io.BytesIO(), size=3, etag=old)
    assert store.get_range("k", 0, 10, etag=new) == b"two!"


def test_missing_object_is_not_found(store: ObjectStore) -> None:
    calls = [
        lambda: store.head("nope"),
        lambda: store.peek("nope", 10),
        lambda: store.get_range("nope", 0, 10),
        lambda: store.download("nope", io.BytesIO(), size=1),
        lambda: store.copy("nope", "dst"),
        lambda: store.copy("nope", "dst", metadata={"a": "b"}, size=1),
    ]
    for call in calls:
        with pytest.raises(NotFound) as e:
            call()
        assert e.value.errno == errno.ENOENT
    assert listing(store, "") == ([], [])  # the copies made nothing


def test_peek(store: ObjectStore) -> None:
    body = bytes(range(256)) * 40
    put(store, "p", body, mode="33152")
    info, head = store.peek("p", 1000)
    assert (info.size, info.etag, head) == (len(body), md5(body), body[:1000])
    assert info.metadata == {"mode": "33152"}
    info, head = store.peek("p", 1 << 20)
    assert head == body
    put(store, "empty", b"")
    info, head = store.peek("empty", 1000)
    assert (info.size, head) == (0, b"")


def test_head_many(store: ObjectStore) -> None:
    put(store, "a", b"1")
    put(store, "b", b"22")
    got = store.head_many(["a", "b", "c"])
    assert set(got) == {"a", "b", "c"}
    a, b, c = got["a"], got["b"], got["c"]
    assert not isinstance(a, S3MountError) and a.size == 1
    assert not isinstance(b, S3MountError) and b.size == 2
    assert isinstance(c, NotFound)
    assert store.head_many([]) == {}


def test_get_range(store: ObjectStore) -> None:
    body = b"0123456789"
    etag = put(store, "r", body)
    assert store.get_range("r", 0, 4) == b"0123"
    assert store.get_range("r", 7, 100) == b"789"  # fewer at the end
    assert store.get_range("r", 10, 5) == b""  # at the end
    assert store.get_range("r", 50, 5) == b""  # past it
    assert store.get_range("r", 3, 0) == b""
    assert store.get_range("r", 2, 3, etag=etag) == b"234"


def test_download(store: ObjectStore, tmp_path: Path) -> None:
    small = b"small body"
    etag = put(store, "s", small)
    with open(tmp_path / "out", "w+b") as out:
        out.write(b"left over from before, longer than the object")
        store.download("s", out, size=len(small), etag=etag)
        out.seek(0)
        assert out.read() == small
    big = bytes(range(251)) * (PART // 251 + 9)  # above the part size: ranged GETs
    etag = put(store, "big", big)
    with open(tmp_path / "big", "w+b") as out:
        store.download("big", out, size=len(big), etag=etag)
        out.seek(0)
        assert out.read() == big


def test_upload_small_and_multipart(store: ObjectStore, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"a small file")
    assert store.upload("up/small", str(small), metadata={"mode": "33188"}) == md5(b"a small file")
    assert store.head("up/small").metadata == {"mode": "33188"}
    body = bytes(range(256)) * (PART // 256) + b"tail"  # one full part and a bit
    big = tmp_path / "big"
    big.write_bytes(body)
    etag = store.upload("up/big.bin", str(big), metadata={"mode": "33261"})
    assert etag == multipart_etag(body[:PART], body[PART:])
    info = store.head("up/big.bin")
    assert (info.etag, info.size, info.metadata) == (etag, len(body), {"mode": "33261"})
    assert store.get_range("up/big.bin", PART - 2, 10) == body[PART - 2:PART + 8]


def test_upload_reports_progress(store: ObjectStore, tmp_path: Path) -> None:
    """``status`` shows how far an upload got from these calls (issue 20.13)."""
    for name, body in (("small", b"x" * 100), ("big", b"y" * (PART + 5))):
        (tmp_path / name).write_bytes(body)
        sent: list[int] = []
        store.upload(f"p/{name}", str(tmp_path / name), metadata={}, progress=sent.append)
        assert sum(sent) == len(body) and all(n > 0 for n in sent), (name, sent)


def test_multipart_by_parts(store: ObjectStore) -> None:
    first, last = b"a" * PART, b"the end"
    upload_id = store.create_multipart("mp", metadata={"Mode": "33188"},
                                       content_type="application/x-mp")
    e2 = store.upload_part("mp", upload_id, 2, last)  # parts may come in any order
    e1 = store.upload_part("mp", upload_id, 1, first)
    assert (e1.strip('"'), e2.strip('"')) == (md5(first), md5(last))
    with pytest.raises(NotFound):
        store.head("mp")  # nothing until completed
    etag = store.complete_multipart("mp", upload_id, [(2, e2), (1, e1)])  # put in order
    assert etag == multipart_etag(first, last)
    info = store.head("mp")
    assert (info.etag, info.size) == (etag, PART + len(last))
    assert (info.metadata, info.content_type) == ({"mode": "33188"}, "application/x-mp")
    assert store.get_range("mp", PART - 1, 4) == b"athe"


def test_multipart_refusals(store: ObjectStore) -> None:
    upload_id = store.create_multipart("bad", metadata={})
    e1 = store.upload_part("bad", upload_id, 1, b"a" * PART)
    e2 = store.upload_part("bad", upload_id, 2, b"b")
    with pytest.raises(S3MountError):  # a part that was never sent
        store.complete_multipart("bad", upload_id, [(1, e1), (3, e2)])
    small = store.create_multipart("small", metadata={})
    s1 = store.upload_part("small", small, 1, b"too small")
    s2 = store.upload_part("small", small, 2, b"last")
    with pytest.raises(S3MountError):  # only the last part may be under the minimum
        store.complete_multipart("small", small, [(1, s1), (2, s2)])
    assert store.abort_multipart("small", small) is True
    assert store.abort_multipart("bad", upload_id) is True
    with pytest.raises(S3MountError):  # the upload is gone
        store.complete_multipart("bad", upload_id, [(1, e1), (2, e2)])
    with pytest.raises(S3MountError):
        store.complete_multipart("bad", "no-such-upload", [(1, e1)])
    with pytest.raises(S3MountError):  # a part's ETag that is not the part's
        store.complete_multipart("small", store.create_multipart("small", metadata={}),
                                 [(1, e1)])
    assert listing(store, "") == ([], [])


def test_copy_keeps_or_replaces_metadata(store: ObjectStore) -> None:
    etag = store.put("src.txt", b"copied", metadata={"mode": "33188", "uid": "1"})
    assert store.copy("src.txt", "keep.bin") == etag
    kept = store.head("keep.bin")
    assert (kept.etag, kept.metadata, kept.content_type) == (etag, {"mode": "33188", "uid": "1"},
                                                            "text/plain")
    assert store.copy("src.txt", "new.txt", metadata={"Mode": "33261"}, size=6) == etag
    assert store.head("new.txt").metadata == {"mode": "33261"}  # replaced, not merged
    assert store.copy("src.txt", "src.txt", metadata={"mode": "33184"}) == etag  # onto itself
    assert store.head("src.txt").metadata == {"mode": "33184"}
    assert store.get_range("new.txt", 0, 100) == b"copied"


def test_copy_of_a_multipart_object(store: ObjectStore, tmp_path: Path) -> None:
    body = b"m" * PART + b"rest"
    (tmp_path / "f").write_bytes(body)
    store.upload("mp", str(tmp_path / "f"), metadata={"mode": "33188"})
    etag = store.copy("mp", "copy", size=len(body))
    info = store.head("copy")
    assert (info.etag, info.size, info.metadata) == (etag, len(body), {"mode": "33188"})
    assert store.get_range("copy", PART - 2, 6) == b"mmrest"


def test_delete(store: ObjectStore) -> None:
    put(store, "gone")
    store.delete("gone")
    with pytest.raises(NotFound):
        store.head("gone")
    store.delete("gone")  # again: no error (S3)
    store.delete("never-was")


def test_list_with_delimiter(store: ObjectStore) -> None:
    for key in ["a", "d/", "d/x", "d/y/z", "e/f", "ab", "top/1"]:
        put(store, key)
    page = store.list_page("")
    assert [o.key for o in page.objects] == ["a", "ab"]
    assert page.prefixes == ["d/", "e/", "top/"] and page.next_token is None
    page = store.list_page("d/")
    assert [o.key for o in page.objects] == ["d/", "d/x"] and page.prefixes == ["d/y/"]
    info = page.objects[1]
    assert (info.size, info.etag, info.metadata) == (1, md5(b"x"), None)  # no metadata in lists
    assert time.time() - 60 < info.last_modified < time.time() + 60
    assert store.list_page("a").prefixes == []
    assert [o.key for o in store.list_page("a").objects] == ["a", "ab"]
    flat, none = listing(store, "", delimiter=None)
    assert flat == ["a", "ab", "d/", "d/x", "d/y/z", "e/f", "top/1"] and none == []
    assert listing(store, "nothing/") == ([], [])


def test_list_pages_and_start_after(store: ObjectStore) -> None:
    names = [f"f{i:02d}" for i in range(12)]
    for n in names:
        put(store, f"p/{n}")
    for d in ("d1", "d2", "g1"):  # prefixes among the objects count towards a page
        put(store, f"p/{d}/inside")
        put(store, f"p/{d}/more")
    pages = []
    token = None
    while True:
        page = store.list_page("p/", max_keys=4, token=token)
        pages.append(page)
        assert len(page.objects) + len(page.prefixes) <= 4
        if page.next_token is None:
            break
        token = page.next_token
    assert len(pages) == 4  # 15 entries, 4 a page
    assert [o.key for p in pages for o in p.objects] == [f"p/{n}" for n in names]
    assert [x for p in pages for x in p.prefixes] == ["p/d1/", "p/d2/", "p/g1/"]
    keys, _ = listing(store, "p/", start_after="p/f05")
    assert keys == [f"p/{n}" for n in names[6:]]
    keys, prefixes = listing(store, "p/", start_after="p/f05", max_keys=2)
    assert keys == [f"p/{n}" for n in names[6:]] and prefixes == ["p/g1/"]
    keys, _ = listing(store, "p/", delimiter=None, max_keys=5, start_after="p/d2/inside")
    assert keys[:2] == ["p/d2/more", "p/f00"] and len(keys) == 15


def test_concurrent_calls(store: ObjectStore) -> None:
    """Calls from several threads at once (the core's workers) all take effect."""
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(10):
                put(store, f"c/{t}/{i}", f"{t}-{i}".encode())
                assert store.head(f"c/{t}/{i}").size == len(f"{t}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    keys, _ = listing(store, "c/", delimiter=None, max_keys=7)
    assert sorted(keys) == sorted(f"c/{t}/{i}" for t in range(4) for i in range(10))


# -- the fault wrapper -----------------------------------------------------------------------------

@pytest.fixture
def faulty() -> FaultyStore:
    return FaultyStore(MemoryStore())


def test_fails_the_nth_call_of_a_kind(faulty: FaultyStore) -> None:
    memory = faulty.store
    assert isinstance(memory, MemoryStore)
    faulty.fail("put", Unavailable("down"), nth=2, times=2)
    put(faulty, "1")
    for _ in range(2):
        with pytest.raises(Unavailable) as e:
            put(faulty, "2")
        assert e.value.errno == errno.EIO
    put(faulty, "3")
    assert [o.key for o in memory.objects()] == ["1", "3"]
    assert (faulty.calls["put"], faulty.failed["put"]) == (4, 2)
    assert not faulty.armed("put")
    faulty.head("1")  # other kinds pass
    faulty.fail("abort_multipart", Unavailable("down"))
    assert faulty.abort_multipart("1", "u") is False  # it never raises
    assert faulty.abort_multipart("1", "u") is True
    faulty.fail("head_many", AccessDenied("no"))
    assert {k: type(v) for k, v in faulty.head_many(["1", "3"]).items()} == \
        {"1": AccessDenied, "3": AccessDenied}
    with pytest.raises(ValueError):
        faulty.fail("heda", Unavailable())


def test_slows_a_kind(faulty: FaultyStore) -> None:
    faulty.slow("head", 0.3)
    put(faulty, "k")
    t = time.monotonic()
    faulty.store.head("k")  # type: ignore[attr-defined]
    put(faulty, "k")
    assert time.monotonic() - t < 0.2
    t = time.monotonic()
    faulty.head("k")
    assert time.monotonic() - t >= 0.3
    faulty.clear()
    t = time.monotonic()
    faulty.head("k")
    assert time.monotonic() - t < 0.2


def test_expired_keys_fail_every_call_as_the_s3_store_does(sandbox: SandboxProcess, bucket: str,
                                                           faulty: FaultyStore) -> None:
    """Keys revoked on the server fail the S3 store's calls with EACCES; the fault wrapper's
    expired keys fail every call the same way, until renewed."""
    keys = sandbox.issue_keys([bucket])
    real = S3Store(StoreConfig(bucket=bucket, endpoint_url=sandbox.url, region="us-east-1",
                               timeout=20), Refresher(StaticProvider(keys)))
    put(real, "k")
    sandbox.revoke(keys.access_key)
    with pytest.raises(AccessDenied) as real_error:
        real.head("k")
    put(faulty, "k")
    faulty.expire_keys()
    for call in (lambda: faulty.head("k"), lambda: put(faulty, "k"),
                 lambda: faulty.list_page(""), lambda: faulty.delete("k")):
        with pytest.raises(AccessDenied) as e:
            call()
        assert e.value.errno == real_error.value.errno == errno.EACCES
    faulty.renew_keys()
    assert faulty.head("k").size == 1
