"""How a mount ends (issue 16.6) and what it shows meanwhile (issue 20.13), on real mounts.

A mount in use is never torn down under a writer: ``s3mount umount`` refuses while a file is open,
``--lazy`` and a stop by signal (systemd's) detach it but keep serving the open files, and each is
still stored when it is closed. Pending uploads show their progress in ``status`` and, once they
finish after an unmount, in the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mountlib import S3MOUNT, Mount, Mounter, mount_status, run

from s3mount.sandbox.faultproxy import Fault, FaultProxy

MiB = 1024 * 1024
WRITER = "exec 3>{f}; echo first >&3; echo ready; cat >/dev/null; echo second >&3"
"""The issue's reproduction: a writer holding a descriptor across the unmount. It says ``ready``
once "first" is written, and writes "second" only when the test closes its stdin (``cat``, which
holds the descriptor too, waits for that): the unmount happens in between, however fast or
slow the machine (a ``sleep`` here once decided it)."""
READY_TIMEOUT = 60.0
StartWriter = Callable[[Path], "subprocess.Popen[str]"]


@pytest.fixture
def writer() -> Iterator[StartWriter]:
    """Starts writers of a file, each returned once "first" is written and the descriptor
    open; ``_finish`` lets one go on. A writer a failed test left waiting is killed (with its
    ``cat``) before the mount is unmounted."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["bash", "-c", WRITER.format(f=path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        assert line == "ready\n", f"the writer did not start: {line!r}"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _finish(writer: subprocess.Popen[str]) -> None:
    """Let the writer write "second" and close; it must succeed (no ENOTCONN)."""
    assert writer.stdin is not None
    writer.stdin.close()
    assert writer.wait(30) == 0, writer.stderr.read() if writer.stderr else ""


def _umount(m: Mount, *extra: str) -> subprocess.CompletedProcess[str]:
    return run([*S3MOUNT, "umount", *extra, str(m.path)], env=m.env, check=False, timeout=120)


def _exited(pid: int, timeout: float) -> bool:
    """Whether ``pid`` is gone (or a zombie), waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _statuses(env: dict[str, str]) -> list[dict[str, Any]]:
    r = run([*S3MOUNT, "status", "--json"], env=env, timeout=60)
    return list(json.loads(r.stdout))


def test_umount_refuses_a_mount_in_use(mnt: Mount, s3, writer: StartWriter) -> None:
    w = writer(mnt.path / "w")
    r = _umount(mnt)
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    # bash and its `sleep` both hold the descriptor: 2
    assert len(lines) == 1 and "busy (2 open file(s))" in lines[0] and "--lazy" in lines[0], lines
    assert os.path.ismount(mnt.path)
    _finish(w)
    r = _umount(mnt)
    assert r.returncode == 0, r.stderr
    assert not os.path.ismount(mnt.path)
    assert s3.get_object(Bucket=mnt.bucket, Key="w")["Body"].read() == b"first\nsecond\n"


def test_lazy_umount_stores_the_open_file_when_it_is_closed(mnt: Mount, s3,
                                                           writer: StartWriter) -> None:
    w = writer(mnt.path / "w")
    r = _umount(mnt, "--lazy")  # returns although the writer cannot go on before _finish
    assert r.returncode == 0 and r.stderr == "", r
    assert not os.path.ismount(mnt.path)
    assert mnt.pid is not None
    (entry,) = [e for e in _statuses(mnt.env) if e["pid"] == mnt.pid]
    assert entry["detached"] is True and entry["open_files"] == 1
    _finish(w)
    assert _exited(mnt.pid, 60), "the mount process did not exit after the last close"
    assert s3.get_object(Bucket=mnt.bucket, Key="w")["Body"].read() == b"first\nsecond\n"
    assert "1 open file(s) keep working" in mnt.log()


def test_a_detached_mount_that_ends_leaves_the_entry_of_the_next_mount_there(
        mounter: Mounter, bucket: str, writer: StartWriter) -> None:
    """Mounted again at the same mountpoint while the lazily unmounted process still serves a
    file: when that process ends, it withdrew the entry under the mountpoint's name, which was
    the new mount's. ``status`` lacked the live mount, and a ``umount`` then did not wait for
    its uploads (until it published again, up to 5 s later)."""
    m1 = mounter(bucket)
    w = writer(m1.path / "w")
    assert _umount(m1, "--lazy").returncode == 0
    m2 = mounter(bucket, path=m1.path)
    _finish(w)
    assert m1.pid is not None and _exited(m1.pid, 60), "the detached process did not end"
    assert [e["pid"] for e in _statuses(m2.env) if e["mountpoint"] == str(m2.path)] == [m2.pid]


def test_a_mount_unmounted_from_outside_and_mounted_again_shows_as_detached(
        mounter: Mounter, bucket: str, writer: StartWriter) -> None:
    """``fusermount3 -uz`` (no word to the process), then a new mount at the same mountpoint:
    the old process saw its mountpoint still mounted, published its entry under the
    mountpoint's name again, over the new mount's, and ``status`` and ``umount`` took it for
    the live mount (a umount then waited for the old process, not for the new one's uploads).
    It now tells its own mount from the new one by the device in the mount table."""
    m1 = mounter(bucket)
    w = writer(m1.path / "w")
    run(["fusermount3", "-uz", str(m1.path)])
    m2 = mounter(bucket, path=m1.path)
    deadline = time.monotonic() + 20  # the old process publishes every 5 s
    while True:
        here = {e["pid"]: e["detached"] for e in _statuses(m2.env)
                if e["mountpoint"] == str(m2.path)}
        assert here.get(m2.pid) is False and here.get(m1.pid) is not False, here
        if here.get(m1.pid):
            break
        assert time.monotonic() < deadline, f"the old process never showed as detached: {here}"
        time.sleep(0.5)
    _finish(w)
    assert m1.pid is not None and _exited(m1.pid, 60), "the detached process did not end"


def test_stop_by_signal_keeps_serving_the_open_file(mnt: Mount, s3, writer: StartWriter) -> None:
    """systemd's stop is a SIGTERM to the mount process: it must keep the same promise."""
    w = writer(mnt.path / "w")
    assert mnt.pid is not None
    os.kill(mnt.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.ismount(mnt.path):
        assert time.monotonic() < deadline, "SIGTERM did not detach the mount"
        time.sleep(0.1)
    _finish(w)
    assert _exited(mnt.pid, 60)
    assert s3.get_object(Bucket=mnt.bucket, Key="w")["Body"].read() == b"first\nsecond\n"
    assert "is busy, so it was detached lazily" in mnt.log()


HELD_PART = Fault("hold", count=1, methods=("PUT",), path="partNumber=3")
"""The third part's answer, held at the proxy until the test releases it (with max_uploads=1
the parts go one after the other): the upload is in flight with exactly two parts stored."""
HELD_COMPLETION = Fault("hold", count=1, methods=("POST",), path="uploadId=")
"""The answer to completing the multipart upload, held: every part is stored, the file is not."""
LONG_TIMEOUT = "timeout=600"
"""So that no attempt gives up on a held answer (each waits a sixth or a third of timeout)."""


def _wait_held(proxy: FaultProxy) -> None:
    """Until the proxy holds the answer its ``hold`` fault is for."""
    deadline = time.monotonic() + 60
    while not proxy.stats().get("hold"):
        assert time.monotonic() < deadline, f"no request was held: {proxy.stats()}"
        time.sleep(0.1)


def _write_out_of_order(path: Path, size: int) -> bytes:
    """Written back to front, so it is not streamed while written: it is uploaded after close."""
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.seek(size - MiB)
        f.write(data[-MiB:])
        f.seek(0)
        f.write(data[:-MiB])
    return data


def test_status_shows_upload_progress_and_the_log_when_it_ends(
        pmounter: Mounter, proxy: FaultProxy, bucket: str, s3) -> None:
    m = pmounter(bucket, "async_upload", "part_size=5", "max_uploads=1", LONG_TIMEOUT)
    proxy.set_faults([HELD_PART])
    size = 20 * MiB
    data = _write_out_of_order(m.path / "big", size)
    _wait_held(proxy)
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30  # the status is published every second while uploading
    while not any(u["stored"] == 10 * MiB for u in seen):
        assert time.monotonic() < deadline, f"two parts stored not shown: {seen}"
        seen = mount_status(m.path, m.env).get("uploads") or []
        time.sleep(0.3)
    (u,) = seen
    assert u["path"] == "big" and u["total"] == size and u["rate"] > 0
    # Unmount while it is still uploading: umount waits (quiet: not a terminal), the log says
    # when the uploads finished.
    umount = subprocess.Popen([*S3MOUNT, "umount", str(m.path)], env=m.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while "unmounted; uploading 1 file(s) still pending" not in m.log():
            assert umount.poll() is None and time.monotonic() < deadline, m.log()
            time.sleep(0.1)
    finally:
        proxy.release()
        out, err = umount.communicate(timeout=120)
    assert umount.returncode == 0 and err == "", (out, err)
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == data
    assert "uploads after the unmount finished: all 1 file(s) stored" in m.log()


def test_stop_tells_systemd_it_is_still_uploading(pmounter: Mounter, proxy: FaultProxy,
                                                  bucket: str, s3, tmp_path: Path) -> None:
    """A stop that uploads for longer than TimeoutStopSec must not be killed while it progresses:
    the mount process extends the timeout (EXTEND_TIMEOUT_USEC) and says how far it is."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(1)
    try:
        env = dict(pmounter.env_for(pmounter.sandbox.issue_keys([bucket])),
                   NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
        m = pmounter(bucket, "async_upload", "part_size=5", "max_uploads=1", LONG_TIMEOUT,
                     env=env)
        proxy.set_faults([HELD_COMPLETION])
        data = _write_out_of_order(m.path / "big", 20 * MiB)
        assert m.pid is not None
        os.kill(m.pid, signal.SIGTERM)
        got: list[str] = []
        deadline = time.monotonic() + 60
        while not _exited(m.pid, 0) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                got += listener.recv(4096).decode().splitlines()
            if any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in got):
                proxy.release()  # the stop has said it still uploads: let the upload end
    finally:
        listener.close()
        proxy.release()
    assert "STOPPING=1" in got
    assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in got), got
    assert any(line.startswith("STATUS=stopping: 1 file(s) to upload: ") for line in got), got
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == data


def test_umount_on_a_terminal_shows_live_progress(pmounter: Mounter, proxy: FaultProxy,
                                                  bucket: str, s3) -> None:
    m = pmounter(bucket, "async_upload", "part_size=5", "max_uploads=1", LONG_TIMEOUT)
    proxy.set_faults([HELD_COMPLETION])
    data = _write_out_of_order(m.path / "big", 15 * MiB)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*S3MOUNT, "umount", str(m.path)], env=m.env, stdin=slave,
                                stdout=slave, stderr=slave)
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if b"of 15.0 MiB stored" in out:
                proxy.release()  # a progress line was shown while the upload was in flight
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the command exited and closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        assert proc.wait(30) == 0, out
    finally:
        os.close(master)
        proxy.release()
    text = out.decode()
    assert f"\rs3mount: {m.path}: 1 file(s) to upload: " in text, text
    assert "of 15.0 MiB stored" in text and text.endswith("\r\n"), text
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == data


def test_umount_says_how_many_uploads_failed_and_tries_each_once(
        pmounter: Mounter, proxy: FaultProxy, bucket: str) -> None:
    """A user who unmounts while the server is down learns that files are not stored (one line,
    exit 1). Each upload costs up to ``timeout`` while the umount waits: it is tried once after
    the unmount, not a second time on the way out."""
    m = pmounter(bucket, "async_upload", "timeout=2")
    pmounter.expect_log(r"could not upload|could not be stored")
    with open(m.path / "kept", "wb") as f:  # created while the server answers
        proxy.set_down(True)
        f.write(b"data")
    # async_upload: close() returned at once; the upload fails
    r = _umount(m)
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "1 file(s) could not be stored" in lines[0], lines
    assert not os.path.ismount(m.path)
    assert m.log().count("could not upload 'kept' before unmount") == 1, m.log()
