"""Issue #6: nothing written is lost — async uploads survive kill -9, uploads drain at unmount.

The mounts that are killed reach the sandbox through the fault proxy, which refuses their uploads
until the kill: the files are certainly still pending when the mount dies (a fast machine would
otherwise store some, or all, in the moment between close() and the kill)."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from faultlib import NO_PUTS, crash
from mountlib import S3MOUNT, Mounter, mount_status, run

from s3mount.sandbox.faultproxy import Fault, FaultProxy


def keys_in(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]

NO_COMPLETION = Fault("internal", probability=1.0, methods=("POST",), path="uploadId=")
"""Every multipart upload is refused its completion: a streamed file is never stored."""


def wait_for_object(s3, bucket: str, key: str, size: int, timeout: float = 180) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head["ContentLength"] == size:
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.ClientError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} did not arrive in the bucket within {timeout}s")
        time.sleep(0.5)


def _keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
            if not o["Key"].startswith(".s3mount/")]


def test_async_upload_big_file_survives_kill9(pmounter: Mounter, proxy: FaultProxy, bucket: str,
                                              s3, tmp_path: Path) -> None:
    m = pmounter(bucket, "async_upload")
    src = tmp_path / "big"
    with open(src, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1024 * 1024))
    proxy.set_faults([NO_COMPLETION])  # its parts are streamed, it is never completed
    run(["cp", str(src), str(m.path / "big")], timeout=600)
    crash(m, proxy)  # after close(), with the upload still to be completed
    assert _keys(s3, bucket) == []
    m2 = pmounter(bucket, "async_upload", path=tmp_path / "again")
    data = wait_for_object(s3, bucket, "big", 200 * 1024 * 1024, timeout=300)
    assert hashlib.sha256(data).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert (m2.path / "big").stat().st_size == 200 * 1024 * 1024


def test_async_upload_small_files_survive_kill9(pmounter: Mounter, proxy: FaultProxy,
                                                bucket: str, s3, tmp_path: Path) -> None:
    m = pmounter(bucket, "async_upload")
    want = {}
    for i in range(50):
        want[f"small/f{i}"] = os.urandom(100 + i)
    (m.path / "small").mkdir()
    proxy.set_faults([NO_PUTS])
    for k, v in want.items():
        (m.path / k).write_bytes(v)
    crash(m, proxy)
    assert [k for k in _keys(s3, bucket) if k != "small/"] == []
    pmounter(bucket, "async_upload", path=tmp_path / "again")
    for k, v in want.items():
        assert wait_for_object(s3, bucket, k, len(v)) == v


def test_object_changed_meanwhile_goes_to_lost_and_found(pmounter: Mounter, proxy: FaultProxy,
                                                         bucket: str, s3,
                                                         tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="doc", Body=b"original")
    m = pmounter(bucket, "async_upload")
    proxy.set_faults([NO_PUTS])
    (m.path / "doc").write_bytes(b"mine, not uploaded yet")
    crash(m, proxy)
    assert s3.get_object(Bucket=bucket, Key="doc")["Body"].read() == b"original"
    s3.put_object(Bucket=bucket, Key="doc", Body=b"someone else's")
    m2 = pmounter(bucket, path=tmp_path / "again")
    deadline = time.monotonic() + 120
    while True:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket,
                                                     Prefix="lost+found/").get("Contents", [])]
        if keys or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(keys) == 1 and keys[0].startswith("lost+found/doc.")
    assert s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == b"mine, not uploaded yet"
    assert s3.get_object(Bucket=bucket, Key="doc")["Body"].read() == b"someone else's"
    assert "changed in the bucket" in m2.log()


def test_async_upload_drains_at_umount(mounter: Mounter, bucket: str, s3) -> None:
    m = mounter(bucket, "async_upload")
    for i in range(30):
        (m.path / f"f{i}").write_bytes(b"x" * i)
    m.unmount()
    for i in range(30):
        assert s3.get_object(Bucket=bucket, Key=f"f{i}")["Body"].read() == b"x" * i


def test_full_cache_slows_writers_down_instead_of_failing(mounter: Mounter, bucket: str,
                                                          s3) -> None:
    """With a 20 MiB staging limit, 80 MiB written by async uploads all arrive, no error."""
    m = mounter(bucket, "async_upload,cache_size=20")
    blobs = {f"f{i}": os.urandom(8 * 1024 * 1024) for i in range(10)}
    for name, data in blobs.items():
        (m.path / name).write_bytes(data)
    m.unmount()
    for name, data in blobs.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


@pytest.mark.parametrize("options", [(), ("async_upload",)])
def test_an_object_the_server_refuses_goes_to_lost_and_found_once(
        mounter: Mounter, bucket: str, s3, options: tuple[str, ...]) -> None:
    """A PUT the server refuses for good (the sandbox's moto answers 404 to a key holding a
    newline; real S3 takes it) is not retried for ever: the data is stored under lost+found/
    with the newline percent-encoded, the log says so once, ``status`` shows it, and the name
    that could not be stored goes away."""
    m = mounter(bucket, *options)
    (m.path / "d").mkdir()
    name = m.path / "d" / "bad\nname"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"keep me")
    if options:
        os.close(fd)
    else:
        with pytest.raises(OSError) as err:
            os.close(fd)  # close-to-open: close() says the file was not stored
        assert err.value.errno == errno.EIO
    deadline = time.monotonic() + 60
    while not (lost := keys_in(s3, bucket, "lost+found/")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (key,) = lost
    assert key.startswith("lost+found/d/bad%0Aname.")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"keep me"
    time.sleep(3)  # a retry would have come after 1 s, and again after 2 s
    log = m.log()
    assert log.count("refuses to store") == 1 and f"stored as {key!r} instead" in log, log
    assert "retrying later" not in log and "retried in the background" not in log, log
    st = mount_status(m.path, m.env)
    assert st["failed_uploads"] == 0 and st["pending_uploads"] == 0
    (refused,) = st["refused_uploads"]
    assert refused["path"] == "d/bad\nname" and refused["kept_as"] == key
    assert os.listdir(m.path / "d") == []
    assert keys_in(s3, bucket, "lost+found/") == [key]


def test_an_object_refused_at_unmount_goes_to_lost_and_found_before_the_mount_exits(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    """A closed file whose upload is still owed at unmount, and which the server then refuses
    for good (moto's 404 to a key with a newline), is stored under lost+found/ by the unmount's
    own uploads: it is in the bucket when ``umount`` returns, not only after the next mount's
    recovery. The log says so once, and the unmount counts no file as failed."""
    m = pmounter(bucket, "async_upload", "timeout=2")
    (m.path / "d").mkdir()
    proxy.set_faults([NO_PUTS])
    (m.path / "d" / "bad\nname").write_bytes(b"keep me")
    # The background upload fails until its next retry (backoff 1, 2, 4, then 8 s) is further
    # off than the unmount: the refusal comes in the uploads after the unmount.
    deadline = time.monotonic() + 120
    while m.log().count("retrying later") < 4:
        assert time.monotonic() < deadline, m.log()
        time.sleep(0.2)
    proxy.clear()
    r = run([*S3MOUNT, "umount", str(m.path)], env=m.env, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    (key,) = keys_in(s3, bucket, "lost+found/")
    assert key.startswith("lost+found/d/bad%0Aname.")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"keep me"
    assert keys_in(s3, bucket, "d/") == ["d/"]
    staged = [p for p in m.cache_dir.rglob("slot-*/*") if p.name != ".lock"]
    assert staged == [], staged  # nothing left for the next mount to recover a second time
    log = m.log()
    after = log[log.index("unmounted; uploading 1 file(s) still pending"):]
    assert log.count("refuses to store") == 1 and f"stored as {key!r} instead" in after, log
    assert "could not upload" not in log and "could not be stored" not in log, log
