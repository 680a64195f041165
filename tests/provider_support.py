"""Helpers shared by the provider and emulator tests (imported, not a conftest: the lead owns that).

The sandbox S3 server and the emulators run in the test process (threads, loopback ports from
bind(0)); everything still goes over real HTTP.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from s3mount import cli
from s3mount.sandbox.s3server import S3Sandbox
from s3mount.store.base import KeySet

_SANDBOX: S3Sandbox | None = None


def shared_sandbox() -> S3Sandbox:
    """The process's one in-process S3 sandbox, started on first use.

    moto keeps its state in process-global backends, so a second ``S3Sandbox`` in the same process
    would find the first one's users and buckets: every test module shares this one (it dies with
    the process; its threads are daemons). Tests must not depend on the sandbox clock's absolute
    value, since other modules advance it.
    """
    global _SANDBOX
    if _SANDBOX is None:
        _SANDBOX = S3Sandbox().start()
    return _SANDBOX


def s3_client(keys: KeySet) -> Any:
    return boto3.client(
        "s3", endpoint_url=keys.endpoint_url, region_name=keys.region or "us-east-1",
        aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key,
        aws_session_token=keys.session_token,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


def assert_keys_work(keys: KeySet, bucket: str, key: str = "hello.txt") -> None:
    """Put then get an object in ``bucket`` with ``keys`` (the keys are good for their bucket)."""
    s3 = s3_client(keys)
    s3.put_object(Bucket=bucket, Key=key, Body=b"hello " + bucket.encode())
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello " + bucket.encode()


def assert_isolated(keys: KeySet, other_bucket: str) -> None:
    """``keys`` can neither list, read nor write ``other_bucket``."""
    s3 = s3_client(keys)
    calls = [lambda: s3.list_objects_v2(Bucket=other_bucket),
             lambda: s3.get_object(Bucket=other_bucket, Key="hello.txt"),
             lambda: s3.put_object(Bucket=other_bucket, Key="intruder", Body=b"x")]
    for c in calls:
        with pytest.raises(ClientError) as ei:
            c()
        assert ei.value.response["Error"]["Code"] == "AccessDenied"


def write_config(home: Path, profiles: dict[str, dict[str, Any]]) -> Path:
    """Write ``home/s3mount/config.toml`` (mode 0600) with one [profiles.NAME] table each."""
    d = home / "s3mount"
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, body in profiles.items():
        lines.append(f"[profiles.{name}]")
        for k, v in body.items():
            lines.append(f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"')
        lines.append("")
    path = d / "config.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``s3mount ARGV`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    """The CLI failed the way users should see failures: exit != 0, one stderr line, no trace."""
    assert status != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("s3mount: "), err
    for frag in fragments:
        assert frag in lines[0], err


def assert_no_secrets(text: str, secrets: list[str | None]) -> None:
    for s in secrets:
        if s:
            assert s not in text, f"a secret ({s[:3]}...) leaked into the logs"


def xdg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fixture body: an empty private XDG_CONFIG_HOME; logins' browser step runs over HTTP.

    Test modules declare ``xdg = pytest.fixture(xdg_home)`` (fixtures are per module here).
    """
    home = tmp_path / "config"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("S3MOUNT_TEST_BROWSER", "http")
    return home


class LogCheck:
    """What ``debug_caplog`` yields: everything logged during the test, twice over.

    ``text`` is what the production setup would write (root handlers, with ``logsafe``'s redaction
    and quiet libraries) *plus* the raw, unredacted records of our own ``s3mount.*`` loggers, so a
    secret our code logs is caught even though the filter would have hidden it.
    """

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.raw = io.StringIO()
        self.handler = logging.StreamHandler(self.raw)
        self.handler.setFormatter(logging.Formatter("%(name)s %(message)s"))

    @property
    def text(self) -> str:
        return self.caplog.text + self.raw.getvalue()


def debug_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[LogCheck]:
    """Fixture body: log everything at DEBUG, to check that no secret reaches a log."""
    from s3mount import logsafe

    logsafe.install()
    caplog.set_level(logging.DEBUG)
    check = LogCheck(caplog)
    ours = logging.getLogger("s3mount")
    ours.addHandler(check.handler)  # runs before the root's (filtering) handlers
    try:
        yield check
    finally:
        ours.removeHandler(check.handler)


def python_m_s3mount(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m s3mount ARGV`` in a subprocess (exit status, stdout, stderr)."""
    import subprocess

    p = subprocess.run([sys.executable, "-m", "s3mount", *argv], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def emulator_fixtures(emulator_cls: type, settings_cls: type) -> tuple[Any, Any, Any]:
    """The ``started`` (module scope: one emulator on the shared sandbox), ``emu`` (with default
    settings and up again, for each test) and ``info`` (its start() dict) fixtures of a test
    module; assign them to those three names there."""

    @pytest.fixture(scope="module")
    def started() -> Iterator[tuple[Any, dict[str, Any]]]:
        emu = emulator_cls(shared_sandbox())
        info = emu.start()
        yield emu, info
        emu.stop()

    @pytest.fixture
    def emu(started: tuple[Any, dict[str, Any]]) -> Any:
        e = started[0]
        e.settings = settings_cls()
        e.down = False
        return e

    @pytest.fixture
    def info(started: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
        return started[1]

    return started, emu, info
