"""Mounting and unmounting the contenders (s3mount, s3fs-fuse, rclone) with timeouts everywhere.

``Mount`` is a context manager: leaving it always unmounts (the tool's own unmount, then
``fusermount3 -u``, then ``-uz``) and ends the mount process it started, by pid. Keys reach the tools
through the environment or a mode-600 file, never the command line.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 120.0
UNMOUNT_TIMEOUT = 300.0  # s3mount's unmount flushes pending uploads first


class MountError(RuntimeError):
    """A mount or unmount failed; the message is one line for the results table."""


@dataclass(frozen=True)
class Server:
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def s3mount_cli() -> str | None:
    """The ``s3mount`` console script of the running interpreter's environment, else PATH's."""
    here = Path(sys.executable).parent / "s3mount"
    return str(here) if here.exists() else shutil.which("s3mount")


def availability(tool: str) -> str | None:
    """None when ``tool`` can run here, else why not (installs s3fs/rclone with apt-get first)."""
    if tool == "s3mount":
        cli = s3mount_cli()
        if cli is None:
            return "s3mount CLI not installed"
        r = _run([cli, "mount", "--help"], timeout=60, check=False)
        return None if r.returncode == 0 else "`s3mount mount --help` failed: " + _tail(r)
    if shutil.which(tool) is None:
        log.info("installing %s with apt-get", tool)
        r = _run(["apt-get", "install", "-y", tool], timeout=900, check=False)
        if shutil.which(tool) is None:
            return f"{tool} not installable: {_tail(r)}"
    return None


def s3mount_has_option(name: str) -> bool:
    """Whether the s3mount of the running interpreter's environment knows mount option ``name``
    (how the bench tells which features the code under test has)."""
    code = f"from s3mount.options import OPTIONS; print({name!r} in OPTIONS)"
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    return r.stdout.strip() == "True"


def version(tool: str) -> str:
    argv = {"s3fs": ["s3fs", "--version"], "rclone": ["rclone", "version"],
            "ceph": ["ceph", "--version"]}.get(tool)
    if argv is None:
        return ""
    if shutil.which(argv[0]) is None:
        return f"{tool} not installed"
    r = _run(argv, timeout=30, check=False)
    return (r.stdout.strip().splitlines() or ["?"])[0]


def mounted(path: str) -> bool:
    """Whether ``path`` is a mount point, from mountinfo (a stat could hang on a dead FUSE mount)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split(" ")[4]
            if _unescape(point) == path:
                return True
    return False


def mounts_under(root: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [_unescape(line.split(" ")[4]) for line in f]
    return [p for p in points if p == root or p.startswith(root.rstrip("/") + "/")]


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) in MiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fuse_unmount(path: str) -> None:
    """``fusermount3 -u``, and a lazy ``-uz`` if the first did not take."""
    for flags in ("-u", "-uz"):
        if not mounted(path):
            return
        r = _run(["fusermount3", flags, path], timeout=60, check=False)
        if r.returncode != 0:
            log.warning("fusermount3 %s %s: %s", flags, path, _tail(r))
        _wait_until(lambda: not mounted(path), 10)
    if mounted(path):
        raise MountError(f"{path} is still mounted after fusermount3 -uz")


class Mount:
    """One live mount of ``tool`` on ``mountpoint``; ``pid`` is the process serving it."""

    def __init__(self, tool: str, server: Server, bucket: str, mountpoint: Path, *,
                 options: tuple[str, ...] = (), cache_dir: Path, log_dir: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.tool = tool
        self.server = server
        self.bucket = bucket
        self.path = str(mountpoint)
        self.options = options
        self.cache_dir = cache_dir
        self.log_dir = log_dir
        self.extra_env = dict(env or {})
        """Set in the mount process's environment (e.g. MALLOC_ARENA_MAX for a variant)."""
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Mount:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if mounted(self.path):
            raise MountError(f"{self.path} is already mounted")
        try:
            getattr(self, f"_mount_{self.tool}")()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per tool ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RCLONE_"))}
        env.update(self.extra_env)
        return env

    def _mount_s3mount(self) -> None:
        cli = s3mount_cli()
        if cli is None:
            raise MountError("s3mount CLI not installed")
        env = self._env()
        env["AWS_ACCESS_KEY_ID"] = self.server.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.server.secret_key
        opts = ",".join([*self.options, f"cache_dir={self.cache_dir}",
                         f"log_file={self.log_dir / 's3mount.log'}"])
        argv = [cli, "mount", f"s3://{self.bucket}", self.path, "--endpoint-url",
                self.server.url, "--region", self.server.region, "-o", opts]
        # Output to a file, not a pipe: a daemon that kept the pipe open would stall us until the
        # timeout even though the mount is live.
        logf = self.log_dir / "s3mount-mount.log"
        with open(logf, "ab") as out:
            try:
                rc = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=MOUNT_TIMEOUT).returncode
            except subprocess.TimeoutExpired:
                raise MountError(f"s3mount mount timed out after {MOUNT_TIMEOUT:.0f}s") from None
        if rc != 0:
            tail = logf.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise MountError(f"s3mount mount exited {rc}: {tail[0]}")
        if not _wait_until(lambda: mounted(self.path), 10):
            raise MountError("s3mount mount returned 0 but nothing is mounted")
        self.pid = _find_server_pid(self.path)

    def _mount_s3fs(self) -> None:
        pw = self.log_dir / "s3fs.passwd"
        pw.touch(mode=0o600)
        pw.chmod(0o600)
        pw.write_text(f"{self.server.access_key}:{self.server.secret_key}\n")
        opts = [f"passwd_file={pw}", f"url={self.server.url}", "use_path_request_style",
                f"endpoint={self.server.region}", *self.options]
        self._spawn(["s3fs", self.bucket, self.path, "-f", "-o", ",".join(opts)], self._env())

    def _mount_rclone(self) -> None:
        env = self._env()  # also drops AWS_CA_BUNDLE, which rclone would try to load
        env.update({
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Ceph",
            "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.server.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.server.secret_key,
            "RCLONE_CONFIG_BENCH_ENDPOINT": self.server.url,
            "RCLONE_CONFIG_BENCH_REGION": self.server.region,
        })
        conf = self.log_dir / "rclone.conf"
        conf.touch()
        self._spawn(["rclone", "mount", f"bench:{self.bucket}", self.path, "--config", str(conf),
                     "--vfs-cache-mode", "writes", "--cache-dir", str(self.cache_dir),
                     *self.options], env)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        """Start a foreground mount process and wait for the mount to appear."""
        logf = self.log_dir / f"{self.tool}.log"
        with open(logf, "ab") as out:
            self._proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self._proc.pid

        def up() -> bool:
            return mounted(self.path) or self._proc.poll() is not None  # type: ignore[union-attr]

        _wait_until(up, MOUNT_TIMEOUT)
        if not mounted(self.path):
            tail = logf.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise MountError(f"{self.tool} did not mount (exit {self._proc.poll()}): {tail[0]}")

    # -- unmount -----------------------------------------------------------------------------

    def close(self) -> None:
        """Unmount however it takes; end the mount process we started. Raises if still mounted."""
        try:
            if self.tool == "s3mount" and mounted(self.path):
                cli = s3mount_cli()
                if cli is not None:
                    r = _run([cli, "umount", self.path], timeout=UNMOUNT_TIMEOUT, check=False)
                    if r.returncode != 0:
                        log.warning("s3mount umount %s: %s", self.path, _tail(r))
            fuse_unmount(self.path)
        finally:
            self._end_process()

    def _end_process(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
        elif self.pid is not None and not _wait_until(lambda: not _alive(self.pid), 30):
            log.warning("s3mount daemon %d still running after unmount; terminating", self.pid)
            os.kill(self.pid, 15)


def _find_server_pid(path: str) -> int | None:
    """The daemon serving ``path``: a live process (not us) whose argv names the mount point."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if path.encode() in argv:
            return int(entry)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def _wait_until(cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _run(argv: list[str], *, timeout: float, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MountError(f"{Path(argv[0]).name} {argv[1]}: timed out after {timeout:.0f}s") \
            from None
    except OSError as exc:
        raise MountError(f"{argv[0]}: {exc}") from None
    if check and r.returncode != 0:
        raise MountError(f"{Path(argv[0]).name} exited {r.returncode}: {_tail(r)}")
    return r


def _tail(r: subprocess.CompletedProcess) -> str:
    lines = (r.stderr or r.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {r.returncode}, no output"
