"""Mount helpers for tests: a real ``s3mount`` mount in its own process, with a watchdog.

Every mount has a watchdog: if a test is still using it after its deadline, the watchdog kills the
mount process and aborts the FUSE connection, so calls blocked in the kernel return ENOTCONN and the
one test fails instead of the suite hanging. ``Mounter.close`` always unmounts (``s3mount umount``,
then ``fusermount3 -u``, then ``-uz``).

After unmounting, ``Mounter.close`` reads every mount's log and fails the test (an error in its
teardown) when a log record has an "internal error" (an exception the FUSE adapter did not expect)
or a traceback, unless the test declared it with ``Mounter.expect_log(pattern)``: a bug that a
file operation turned into a plain EIO, or that a background task only logged, then does not pass
unseen (s3ql's test plugin does the same).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3mount.sandbox.client import SandboxProcess
from s3mount.store.base import KeySet

S3MOUNT = [sys.executable, "-m", "s3mount"]
MOUNT_DEADLINE = float(os.environ.get("S3MOUNT_TEST_MOUNT_DEADLINE", "600"))
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)
"""The start of a log record (logsetup.FORMAT); lines in between (a traceback) belong to the
record before them."""
UNEXPECTED = re.compile(r"internal error|Traceback \(most recent call last\)")


def unexpected_records(log: str, expected: list[re.Pattern[str]]) -> list[str]:
    """The records of ``log`` with an internal error or a traceback that no pattern of
    ``expected`` matches."""
    starts = [m.start() for m in RECORD_START.finditer(log)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    records = [log[a:b] for a, b in zip(starts, [*starts[1:], len(log)], strict=True)]
    return [r.rstrip() for r in records
            if UNEXPECTED.search(r) and not any(p.search(r) for p in expected)]


def run(cmd: list[str] | str, *, timeout: float = 120, check: bool = True, **kw: Any
        ) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout (never unbounded: the mount may be wedged)."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(cmd, str), **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def mount_status(mp: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``s3mount status --json`` of ``mp``: published before ``s3mount mount`` returns, so it is
    asked once (SEMANTICS, unmounting: a ``umount`` right after a mount waits for its uploads)."""
    r = subprocess.run([*S3MOUNT, "status", "--json", str(mp)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (entry,) = json.loads(r.stdout)
    return dict(entry)


@dataclass
class Mount:
    """A live ``s3mount`` mount in its own process."""

    path: Path
    bucket: str
    env: dict[str, str]
    args: list[str]
    cache_dir: Path
    log_file: Path
    pid: int | None = None
    _watchdog: threading.Timer | None = field(default=None, repr=False)
    conn: int | None = None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def unmount(self, timeout: float = 120) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not os.path.ismount(self.path):
            return
        r = subprocess.run([*S3MOUNT, "umount", str(self.path)], capture_output=True, text=True,
                           timeout=timeout, env=self.env)
        if r.returncode != 0 and os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, timeout=30)
        if os.path.ismount(self.path):
            self.abort()

    def abort(self) -> None:
        """Kill the mount process and tear down the FUSE connection (for wedged mounts)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.conn is not None:
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/fuse/connections/{self.conn}/abort").write_text("1")
        subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True, timeout=30)

    def kill9(self) -> None:
        """SIGKILL the mount process (crash simulation); the kernel mount is then torn down."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        for _ in range(100):
            if not _alive(self.pid):
                break
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True, timeout=30)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _find_pid(mountpoint: Path, others: set[int | None] | frozenset[int] = frozenset()
              ) -> int | None:
    """The mount process serving ``mountpoint``, other than ``others`` (earlier mounts of it,
    which may still serve open files after a lazy unmount)."""
    target = str(mountpoint)
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in others:
            continue
        try:
            args = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"s3mount" in b" ".join(args) and b"-f" in args and target.encode() in args:
            return int(d)
    return None


class Mounter:
    """Makes mounts for one test and unmounts them all at the end."""

    def __init__(self, sandbox: SandboxProcess, tmp_path: Path) -> None:
        self.sandbox = sandbox
        self.tmp = tmp_path
        self.mounts: list[Mount] = []
        self.cache_dir = tmp_path / "cache"
        self.state_dir = tmp_path / "state"
        self.expected_log: list[re.Pattern[str]] = []

    def expect_log(self, pattern: str) -> None:
        """Let the mounts' logs have records (an internal error, a traceback) that ``pattern``
        (a regular expression, searched in the whole record) matches, without failing the
        test in teardown."""
        self.expected_log.append(re.compile(pattern))

    def env_for(self, keys: KeySet) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=keys.access_key, AWS_SECRET_ACCESS_KEY=keys.secret_key,
                   XDG_STATE_HOME=str(self.state_dir), AWS_CONFIG_FILE="/dev/null",
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        if keys.session_token:
            env["AWS_SESSION_TOKEN"] = keys.session_token
        return env

    def __call__(self, bucket: str, *options: str, prefix: str = "", keys: KeySet | None = None,
                 path: Path | None = None, cache_dir: Path | None = None,
                 deadline: float = MOUNT_DEADLINE, env: dict[str, str] | None = None,
                 profile: str | None = None) -> Mount:
        """Mount ``s3://bucket/prefix`` with ``keys`` (fresh ones if None) in the environment, or,
        with ``profile``, that profile (its provider brings bucket, endpoint and keys; ``env``
        then carries XDG_CONFIG_HOME)."""
        path = path or self.tmp / f"mnt{len(self.mounts)}"
        path.mkdir(exist_ok=True)
        cache = cache_dir or self.cache_dir
        opts = ",".join([f"cache_dir={cache}", *options])
        if profile is not None:
            assert env is not None, "a profile mount needs the environment with its config"
            args = ["mount", profile, str(path), "-o", opts]
        else:
            source = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
            args = ["mount", source, str(path), "--endpoint-url", self.sandbox.url, "-o", opts]
            env = env or self.env_for(keys or self.sandbox.issue_keys([bucket]))
        log_file = self.tmp / f"mount{len(self.mounts)}.log"
        args += ["-o", f"log_file={log_file}"]
        m = Mount(path, bucket, env, args, cache, log_file)
        self.mounts.append(m)
        r = subprocess.run([*S3MOUNT, *args], capture_output=True, text=True, timeout=180,
                           env=env)
        if r.returncode != 0:
            raise AssertionError(f"mount failed ({r.returncode}): {r.stderr}\n{m.log()}")
        m.pid = _find_pid(path, {o.pid for o in self.mounts if o.path == path})
        m.conn = os.minor(os.stat(path).st_dev)
        m._watchdog = threading.Timer(deadline, m.abort)
        m._watchdog.daemon = True
        m._watchdog.start()
        return m

    def close(self) -> None:
        """Unmount every mount, then fail if a log has a record the test did not expect."""
        for m in reversed(self.mounts):
            try:
                m.unmount()
            except Exception:  # noqa: BLE001 - teardown must reach every mount
                m.abort()
        found = [f"{m.log_file}:\n{r}" for m in self.mounts
                 for r in unexpected_records(m.log(), self.expected_log)]
        if found:
            raise AssertionError("the mount logged errors the test did not expect (declare "
                                 "expected ones with mounter.expect_log):\n" + "\n".join(found))
