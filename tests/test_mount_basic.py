"""Issue #2: a bucket mounted for real and used with ordinary file tools."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from mountlib import S3MOUNT, Mount, Mounter, run


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_object(s3, bucket: str, key: str) -> str:
    h = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024 + 1])
def test_roundtrip_sizes(mnt: Mount, s3, size: int, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size))
    run(["cp", str(src), str(mnt.path / "f.bin")])
    want = sha256_file(src)
    assert sha256_file(mnt.path / "f.bin") == want
    assert sha256_object(s3, mnt.bucket, "f.bin") == want
    assert os.stat(mnt.path / "f.bin").st_size == size


def test_big_existing_files_are_changed_in_place(mounter: Mounter, bucket: str, s3) -> None:
    """Appending to an object above part_size, or writing into one (both written by another
    tool), first brings it down in parallel ranges; what is stored is the old bytes with the
    change, and the other bytes are untouched."""
    mib = 1024 * 1024
    body = os.urandom(12 * mib)
    s3.put_object(Bucket=bucket, Key="log.bin", Body=body)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    m = mounter(bucket, "part_size=5")
    with open(m.path / "log.bin", "ab") as f:
        f.write(b"appended")
    with open(m.path / "big.bin", "r+b") as f:
        f.seek(7 * mib)
        f.write(b"X" * 100)
    want = {"log.bin": body + b"appended",
            "big.bin": body[:7 * mib] + b"X" * 100 + body[7 * mib + 100:]}
    for key, data in want.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data, key
        assert (m.path / key).read_bytes() == data, key


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_300mib_file_streams_through_disk_not_memory(mnt: Mount, s3, tmp_path: Path) -> None:
    size = 300 * 1024 * 1024
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        block = os.urandom(1024 * 1024)
        for i in range(300):
            f.write(block[:-8] + i.to_bytes(8, "little"))
    want = sha256_file(src)
    run(["cp", str(src), str(mnt.path / "big.bin")], timeout=600)
    assert sha256_object(s3, mnt.bucket, "big.bin") == want
    out = tmp_path / "back.bin"
    run(["cp", str(mnt.path / "big.bin"), str(out)], timeout=600)
    assert sha256_file(out) == want
    assert mnt.pid is not None
    peak = _peak_rss_kib(mnt.pid) * 1024
    assert peak < size / 2, f"mount peaked at {peak >> 20} MiB for a {size >> 20} MiB file"


def test_many_files_at_once_share_a_small_buffer(mounter: Mounter, bucket: str, s3,
                                                 tmp_path: Path) -> None:
    """``buffer_size`` bounds transfer memory across all open files. With room for one part at a
    time, four streaming writers take turns; on a fresh mount four readers and a ``cp`` inside
    the mount (its reads holding buffer while its writes wait for some) still move every byte."""
    opts = ("buffer_size=8", "part_size=5")  # 2 MiB for read-ahead, 6 MiB: one 5 MiB part
    size = 11 * 1024 * 1024  # two full parts and a tail
    srcs = []
    for i in range(4):
        srcs.append(tmp_path / f"src{i}")
        srcs[-1].write_bytes(os.urandom(size))
    w = mounter(bucket, *opts)
    writers = [subprocess.Popen(["cp", str(src), str(w.path / f"f{i}")])
               for i, src in enumerate(srcs)]
    for p in writers:
        assert p.wait(timeout=600) == 0
    for i, src in enumerate(srcs):
        assert sha256_object(s3, bucket, f"f{i}") == sha256_file(src)
        assert s3.head_object(Bucket=bucket, Key=f"f{i}")["ETag"].endswith('-3"')  # streamed
    r = mounter(bucket, *opts, cache_dir=tmp_path / "cache2")
    outs = [tmp_path / f"out{i}" for i in range(4)]
    jobs = [subprocess.Popen(["cp", str(r.path / f"f{i}"), str(out)])
            for i, out in enumerate(outs)]
    jobs.append(subprocess.Popen(["cp", str(r.path / "f0"), str(r.path / "copy")]))
    for p in jobs:
        assert p.wait(timeout=600) == 0
    for src, out in zip(srcs, outs, strict=True):
        assert sha256_file(out) == sha256_file(src)
    assert sha256_object(s3, bucket, "copy") == sha256_file(srcs[0])
    assert s3.head_object(Bucket=bucket, Key="copy")["ETag"].endswith('-3"')


MANY = 1200


def test_foreign_objects_show_up(mounter: Mounter, bucket: str, s3) -> None:
    keys = {
        "nested/only/implicit/file.txt": b"deep",
        "marked/": b"",
        "marked/inside.txt": b"in",
        "emptydir/": b"",
        "with space/na\u00efve \u65e5\u672c.txt": "utf-8 \u2713".encode(),
        "top.txt": b"top",
    }
    for k, v in keys.items():
        s3.put_object(Bucket=bucket, Key=k, Body=v)
    for i in range(MANY):  # more than one listing page (1,000 keys)
        s3.put_object(Bucket=bucket, Key=f"many/f{i:05d}", Body=b"x")
    m = mounter(bucket)
    ls = run(["ls", "-la", str(m.path)]).stdout
    for name in ("nested", "marked", "emptydir", "with space", "top.txt", "many"):
        assert name in ls
    found = run(["find", str(m.path), "-type", "f"], timeout=300).stdout.splitlines()
    rel = {os.path.relpath(p, m.path) for p in found}
    for k in keys:
        if not k.endswith("/"):
            assert k in rel
    assert len([r for r in rel if r.startswith("many/")]) == MANY
    assert sorted(os.listdir(m.path / "many")) == [f"f{i:05d}" for i in range(MANY)]
    assert stat.S_ISDIR(os.stat(m.path / "nested" / "only").st_mode)
    assert os.listdir(m.path / "emptydir") == []
    assert (m.path / "with space" / "na\u00efve \u65e5\u672c.txt").read_text() == "utf-8 \u2713"


def test_tar_roundtrip(mnt: Mount, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    n = 0
    for d in range(6):
        for sub in range(5):
            p = src / f"d{d}" / f"s{sub}"
            p.mkdir(parents=True)
            for f in range(11):
                (p / f"file{f}.dat").write_bytes(os.urandom((d * 977 + f * 31) % 5000))
                n += 1
    assert n >= 300
    (src / "empty-dir").mkdir()
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src, arcname="tree")
    run(["tar", "-xf", str(archive), "-C", str(mnt.path)], timeout=600)
    back = tmp_path / "back.tar"
    run(["tar", "-cf", str(back), "-C", str(mnt.path), "tree"], timeout=600)
    out = tmp_path / "out"
    out.mkdir()
    run(["tar", "-xf", str(back), "-C", str(out)])
    run(["diff", "-r", str(src), str(out / "tree")])


@pytest.mark.parametrize("flags", [os.O_CREAT | os.O_RDONLY, os.O_CREAT | os.O_WRONLY])
def test_create_without_write_leaves_empty_object(mnt: Mount, s3, flags: int) -> None:
    fd = os.open(mnt.path / "touched", flags, 0o640)
    os.close(fd)
    head = s3.head_object(Bucket=mnt.bucket, Key="touched")
    assert head["ContentLength"] == 0
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o640
    st = os.stat(mnt.path / "touched")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 0


def test_bad_input_errnos(mnt: Mount, s3) -> None:
    # A key longer than S3's 1024-byte limit, built from legal 200-byte components.
    p = mnt.path
    for i in range(5):
        p = p / (chr(ord("a") + i) * 200)
        p.mkdir()
    with pytest.raises(OSError) as e:
        (p / ("z" * 200)).write_bytes(b"x")
    assert e.value.errno == errno.ENAMETOOLONG
    (mnt.path / "full").mkdir()
    (mnt.path / "full" / "f").write_text("x")
    with pytest.raises(OSError) as e:
        os.rmdir(mnt.path / "full")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        os.link(mnt.path / "full" / "f", mnt.path / "hardlink")
    assert e.value.errno == errno.EPERM
    r = run(["ln", str(mnt.path / "full" / "f"), str(mnt.path / "hl2")], check=False)
    assert r.returncode != 0 and "not permitted" in r.stderr
    os.mkfifo(mnt.path / "fifo")  # special files are stored (issue 17), hard links are not
    assert stat.S_ISFIFO(os.lstat(mnt.path / "fifo").st_mode)
    assert s3.get_object(Bucket=mnt.bucket, Key="full/f")["Body"].read() == b"x"


def test_fusermount_leaves_nothing_unwritten(mnt: Mount, s3) -> None:
    for i in range(20):
        (mnt.path / f"f{i}").write_bytes(b"data%d" % i)
    run(["fusermount3", "-u", str(mnt.path)])
    for _ in range(100):
        if mnt.pid is None or not os.path.exists(f"/proc/{mnt.pid}"):
            break
        time.sleep(0.1)
    for i in range(20):
        assert s3.get_object(Bucket=mnt.bucket, Key=f"f{i}")["Body"].read() == b"data%d" % i


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*S3MOUNT, *args], capture_output=True, text=True, timeout=120, env=env)


def _one_line_failure(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_cli_failures_are_one_line(mounter: Mounter, sandbox, bucket: str, tmp_path: Path
                                   ) -> None:
    keys = sandbox.issue_keys([bucket])
    env = mounter.env_for(keys)
    mp = tmp_path / "mp"
    mp.mkdir()
    base = ["--endpoint-url", sandbox.url]
    # Keys allowed every bucket see a missing one as missing...
    env_all = mounter.env_for(sandbox.issue_keys("*"))
    _one_line_failure(_cli(["mount", "s3://no-such-bucket-here", str(mp), *base], env_all),
                      "does not exist")
    # ...while scoped keys cannot tell a missing bucket from someone else's.
    _one_line_failure(_cli(["mount", "s3://no-such-bucket-here", str(mp), *base], env),
                      "refused")
    _one_line_failure(_cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url",
                            "http://127.0.0.1:9"], env), "cannot reach")
    bad = dict(env, AWS_SECRET_ACCESS_KEY="wrong" * 8)
    _one_line_failure(_cli(["mount", f"s3://{bucket}", str(mp), *base], bad), "refused")
    _one_line_failure(_cli(["mount", f"s3://{bucket}", str(tmp_path / "nope"), *base], env),
                      "does not exist")
    (tmp_path / "file").write_text("x")
    _one_line_failure(_cli(["mount", f"s3://{bucket}", str(tmp_path / "file"), *base], env),
                      "not a directory")
    _one_line_failure(_cli(["mount", f"s3://{bucket}", str(mp), *base, "-o", "bogus"], env),
                      "unknown mount option")
    _one_line_failure(_cli(["umount", str(mp)], env), "not mounted")
    assert not os.path.ismount(mp)


def test_mount_returns_only_when_live(mnt: Mount) -> None:
    # The command returned; the mount must already answer (no sleep in between).
    assert os.path.ismount(mnt.path)
    assert os.listdir(mnt.path) == []
    assert sys.executable  # the mount is a separate process
    assert mnt.pid is not None and mnt.pid != os.getpid()


def test_read_only_mount(mounter: Mounter, bucket: str, s3) -> None:
    s3.put_object(Bucket=bucket, Key="d/f", Body=b"content")
    m = mounter(bucket, "ro,dir_mode=0700")
    assert (m.path / "d" / "f").read_bytes() == b"content"
    assert stat.S_IMODE(os.stat(m.path / "d").st_mode) == 0o700
    for attempt in (lambda: (m.path / "new").write_text("x"),
                    lambda: (m.path / "d" / "f").write_text("x"),
                    lambda: os.mkdir(m.path / "nd"),
                    lambda: os.unlink(m.path / "d" / "f")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS
    assert s3.get_object(Bucket=bucket, Key="d/f")["Body"].read() == b"content"
