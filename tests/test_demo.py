"""``s3mount demo`` end to end: sandbox, provider login, mount, a file in the bucket, clean stop."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from mountlib import mount_status

from s3mount import runtime

pytestmark = pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="needs root and /dev/fuse")


class Output:
    """The demo's stdout, line by line, read in a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s:\n"
                                     + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"the demo ended before {pattern!r}:\n"
                                     + "\n".join(self.lines))
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m


@pytest.fixture(params=["cleverbase", "clevercloud", "lyvecloud"])
def demo(request, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run"), "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path / "tmp")}
    os.mkdir(tmp_path / "run", 0o700)
    os.mkdir(tmp_path / "tmp", 0o700)
    proc = subprocess.Popen([sys.executable, "-m", "s3mount", "demo", str(mp),
                             "--provider", request.param, "--credential-lifetime", "60"],
                            env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc, Output(proc), mp, env, request.param
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        for cmd in (["fusermount3", "-u", str(mp)], ["fusermount3", "-uz", str(mp)]):
            if str(mp) in runtime.mounted_paths():
                subprocess.run(cmd, capture_output=True, timeout=60)


def test_demo_mounts_the_providers_bucket_and_cleans_up(demo):
    proc, out, mp, env, provider = demo
    state_file = out.wait_for(r"admin keys are in (\S+)\)", timeout=120).group(1)
    bucket = out.wait_for(r"ready: bucket (\S+) is mounted on", timeout=180).group(1)
    state = json.loads(Path(state_file).read_text())
    assert os.path.ismount(mp)

    (mp / "from-demo.txt").write_text("written through the demo mount\n")
    admin = state["admin"]
    s3 = boto3.client("s3", endpoint_url=state["s3"], region_name="us-east-1",
                      aws_access_key_id=admin["access_key"],
                      aws_secret_access_key=admin["secret_key"],
                      aws_session_token=admin.get("session_token"),
                      config=Config(s3={"addressing_style": "path"}))
    body = s3.get_object(Bucket=bucket, Key="from-demo.txt")["Body"].read()
    assert body == b"written through the demo mount\n"

    # the mount runs on the provider's keys (Cleverbase's are short-lived), not on static ones
    entry = mount_status(mp, env)
    assert entry["provider"] == provider and entry["profile"] == "demo"
    assert entry["bucket"] == bucket
    if provider == "cleverbase":
        assert entry["credentials_expire_at"] is not None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, "\n".join(out.lines)
    assert not os.path.ismount(mp)
    assert not Path(state_file).exists()  # sandbox state (admin keys) removed
    with pytest.raises(ProcessLookupError):
        os.kill(state["pid"], 0)  # sandbox stopped
    # the profile (client secret, login tokens) and the sandbox directory are gone
    assert list((mp.parent / "tmp").iterdir()) == []


def test_demo_refuses_a_bad_mountpoint(tmp_path):
    r = subprocess.run([sys.executable, "-m", "s3mount", "demo", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == (f"s3mount: mountpoint {tmp_path / 'missing'} does not exist (create it, "
                        "or give no mountpoint for ~/s3mount-demo)\n")
    (tmp_path / "file").write_text("")
    r = subprocess.run([sys.executable, "-m", "s3mount", "demo", str(tmp_path / "file")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == f"s3mount: mountpoint {tmp_path / 'file'} is not a directory\n"


def test_demo_without_the_sandbox_extra(tmp_path: Path) -> None:
    """Without the sandbox's packages (the ``s3mount[sandbox]`` extra) the demo says which extra
    to install, in one line, before it makes anything."""
    (tmp_path / "sitecustomize.py").write_text(  # as if moto and flask-cors were not installed
        "import sys\nsys.modules.update(moto=None, flask_cors=None)\n")
    mountpoint = tmp_path / "mnt"
    r = subprocess.run([sys.executable, "-m", "s3mount", "demo", str(mountpoint)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode != 0
    (line,) = r.stderr.strip().splitlines()
    assert "moto, flask_cors missing" in line and "pip install 's3mount[sandbox]'" in line
    assert not mountpoint.exists()
