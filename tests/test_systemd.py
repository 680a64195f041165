"""The s3mount@.service user unit: systemd accepts it, and its commands behave as systemd needs.

There is no systemd service manager in the test environment, so the unit's own ExecStartPre/
ExecStart/ExecStopPost lines are expanded (``%i``, ``%h``, ``${VAR}``, ``$VAR``) and run the way
systemd would, with ``NOTIFY_SOCKET`` pointing at a socket the test owns: the mount must report
READY=1 from its main PID (``NotifyAccess=main``) once it is usable, STOPPING=1 on SIGTERM, flush
and unmount, and exit 0 (``Restart=on-failure`` must not fire after a clean stop).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3mount import runtime
from s3mount.install import Targets, install

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "s3mount@.service"
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

needs_mount = pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/dev/fuse"),
                                 reason="needs root and /dev/fuse")


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of the unit (comments skipped); repeated keys keep every value."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def helpers_installed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``s3mount`` in /usr/local/bin, where systemd resolves ``ExecStart=s3mount`` (see
    test_mounthelper: installed when missing, left in place like the README set-up leaves it)."""
    install(Targets(unit_dir=str(tmp_path_factory.mktemp("units"))))


def test_unit_settings():
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and s["KillMode"] == ["mixed"]
    (start,) = s["ExecStart"]
    assert start.startswith("s3mount mount --foreground %i ")
    assert s["WantedBy"] == ["default.target"]


def _verify(unit_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    # The man pages as install-helpers installs them (into /usr/local/share/man by default).
    mandir = tmp_path / "man"
    install(Targets(sbin_dir=str(tmp_path / "sbin"), bin_dir=str(tmp_path / "bin"),
                    unit_dir=str(tmp_path / "unit"), man_dir=str(mandir),
                    completion_dir=str(tmp_path / "completion")))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "MANPATH": str(mandir)}
    return subprocess.run(["systemd-analyze", "verify", "--user",
                           str(unit_dir / "s3mount@work.service")],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_analyze_verify(helpers_installed, tmp_path):
    """Also checks that the man pages the unit points to exist (Documentation=man:...)."""
    r = _verify(UNIT.parent, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_verify_catches_a_broken_unit(helpers_installed, tmp_path):
    """The verification above is able to fail."""
    broken = tmp_path / "units"
    broken.mkdir()
    (broken / "s3mount@.service").write_text(UNIT.read_text().replace("Type=notify", "Type=notfy"))
    r = _verify(broken, tmp_path)
    assert "notfy" in r.stderr


# -- the unit's commands, run as systemd would run them ----------------------------------------

def expand(command: str, instance: str, home: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion of one Exec line: specifiers, ``${VAR}`` (one word), ``$VAR`` (split)."""
    command = command.lstrip("-")
    command = command.replace("%i", instance).replace("%h", home)
    words = []
    for word in shlex.split(command):
        if re.fullmatch(r"\$\w+", word):
            words += env.get(word[1:], "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    exe = shutil.which(words[0], path=SYSTEMD_PATH)
    assert exe, f"systemd would not find {words[0]} in {SYSTEMD_PATH}"
    return [exe, *words[1:]]


class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: datagrams with the sender's credentials."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, want: str, timeout: float) -> tuple[list[str], int]:
        """Wait for a datagram containing line ``want``; return its lines and the sender's pid."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {want} notification within {timeout}s")
            self.sock.settimeout(left)
            data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = next(struct.unpack("3i", d)[0] for lvl, typ, d in ancdata
                       if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS)
            lines = data.decode().split("\n")
            if want in lines:
                return lines, pid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def profile_home(tmp_path, sandbox, bucket) -> dict[str, str]:
    """A user home with profile ``work`` (static keys for ``bucket``) and a private runtime dir."""
    keys = sandbox.issue_keys([bucket])
    home = tmp_path / "home"
    config = home / ".config" / "s3mount"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(
        f'[profiles.work]\nprovider = "static"\nbucket = "{bucket}"\n'
        f'endpoint_url = "{sandbox.url}"\naccess_key = "{keys.access_key}"\n'
        f'secret_key = "{keys.secret_key}"\n')
    os.chmod(config / "config.toml", 0o600)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    # what the user manager gives a service: a small environment, no AWS_* variables
    return {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), "PATH": SYSTEMD_PATH,
            "LANG": "C.UTF-8", "XDG_CACHE_HOME": str(tmp_path / "cache")}


@pytest.fixture
def service(profile_home, tmp_path) -> Iterator[dict]:
    """The unit's settings and environment; whatever it mounted is unmounted in teardown."""
    settings = unit_settings(UNIT.read_text())
    env = dict(profile_home)
    for assignment in settings["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value.replace("%i", "work").replace("%h", env["HOME"])
    notify = NotifySocket(tmp_path / "notify")
    env["NOTIFY_SOCKET"] = notify.path
    state = {"settings": settings, "env": env, "notify": notify,
             "mountpoint": Path(env["S3MOUNT_MOUNTPOINT"]), "procs": []}
    yield state
    for proc in state["procs"]:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    mp = str(state["mountpoint"])
    for cmd in (["fusermount3", "-u", mp], ["fusermount3", "-uz", mp]):
        if mp in runtime.mounted_paths():
            subprocess.run(cmd, capture_output=True, timeout=60)
    notify.close()


def _run(service: dict, key: str) -> subprocess.CompletedProcess[str]:
    (line,) = service["settings"][key]
    return subprocess.run(expand(line, "work", service["env"]["HOME"], service["env"]),
                          env=service["env"], capture_output=True, text=True, timeout=120)


def _start(service: dict) -> subprocess.Popen[str]:
    assert _run(service, "ExecStartPre").returncode == 0
    (line,) = service["settings"]["ExecStart"]
    proc = subprocess.Popen(expand(line, "work", service["env"]["HOME"], service["env"]),
                            env=service["env"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    service["procs"].append(proc)
    return proc


@needs_mount
def test_service_notifies_serves_and_stops_cleanly(helpers_installed, service, s3, bucket):
    proc = _start(service)
    mp = service["mountpoint"]
    lines, sender = service["notify"].receive("READY=1", timeout=90)
    assert sender == proc.pid, "READY=1 must come from the main process (NotifyAccess=main)"
    assert any(line.startswith("STATUS=") for line in lines)
    assert os.path.ismount(mp)
    (mp / "from-systemd.txt").write_text("supervised\n")
    assert s3.get_object(Bucket=bucket, Key="from-systemd.txt")["Body"].read() == b"supervised\n"
    _wait_published(service)

    proc.send_signal(signal.SIGTERM)  # KillMode=mixed: systemd signals the main process
    service["notify"].receive("STOPPING=1", timeout=60)
    assert proc.wait(60) == 0, proc.stdout.read() if proc.stdout else ""
    assert not os.path.ismount(mp)
    assert _run(service, "ExecStopPost").returncode in (0, 1)
    assert mp.is_dir()


@needs_mount
def test_stop_post_detaches_a_dead_mount_only(helpers_installed, service):
    proc = _start(service)
    mp = service["mountpoint"]
    service["notify"].receive("READY=1", timeout=90)
    # a live mount is left alone
    _run(service, "ExecStopPost")
    assert os.path.ismount(mp) and os.listdir(mp) == []
    # after a crash the dead mount is detached, so Restart=on-failure can mount again
    proc.kill()
    proc.wait(30)
    with pytest.raises(OSError) as dead:
        os.listdir(mp)
    assert dead.value.errno == errno.ENOTCONN
    _run(service, "ExecStopPost")
    assert not os.path.ismount(mp)
    proc = _start(service)
    service["notify"].receive("READY=1", timeout=90)
    _wait_published(service)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def _wait_published(service: dict) -> None:
    """Until the daemon's background tasks run (its SIGTERM handler is installed with them)."""
    env = {**os.environ, **service["env"]}
    deadline = time.monotonic() + 30
    while subprocess.run([sys.executable, "-m", "s3mount", "status", str(service["mountpoint"])],
                         env=env, capture_output=True, timeout=60).returncode != 0:
        assert time.monotonic() < deadline, "the mount never published its status"
        time.sleep(0.1)


def test_notify_socket_credentials_helper(tmp_path):
    """The test's socket reports the sender pid (what NotifyAccess=main relies on)."""
    ns = NotifySocket(tmp_path / "n")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", ns.path)
        lines, pid = ns.receive("READY=1", timeout=5)
        assert lines == ["READY=1"] and pid == os.getpid()
    finally:
        ns.close()
