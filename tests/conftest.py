"""Fixtures: a sandbox S3 server per test session, a fresh bucket per test, and real FUSE mounts
(see mountlib.py), each in its own process, always unmounted in teardown."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultlib import through
from mountlib import Mount, Mounter

from s3mount.sandbox.client import SandboxProcess
from s3mount.sandbox.faultproxy import FaultProxy

_counter = itertools.count()


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    with SandboxProcess(log_file=str(log)) as sb:
        yield sb


@pytest.fixture
def bucket(sandbox: SandboxProcess) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}-{next(_counter)}"
    sandbox.create_bucket(name)
    return name


@pytest.fixture
def s3(sandbox: SandboxProcess) -> Any:
    """A boto3 client with admin keys, for looking at buckets behind the mount's back."""
    return sandbox.s3()


@pytest.fixture
def mounter(sandbox: SandboxProcess, tmp_path: Path) -> Iterator[Mounter]:
    m = Mounter(sandbox, tmp_path)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def mnt(mounter: Mounter, bucket: str) -> Mount:
    """A mount of a fresh, empty bucket with default options."""
    return mounter(bucket)


@pytest.fixture
def proxy(sandbox: SandboxProcess) -> Iterator[FaultProxy]:
    """The fault proxy in front of the sandbox S3 server (no faults until a test sets some)."""
    with FaultProxy(sandbox.url, seed=6) as p:
        yield p


@pytest.fixture
def pmounter(proxy: FaultProxy, mounter: Mounter, sandbox: SandboxProcess) -> Iterator[Mounter]:
    """The ``mounter`` fixture (same teardown), with mounts going through ``proxy``; the proxy is
    set back up before the mounts are unmounted, so unmounting never waits on a dead server."""
    yield through(mounter, sandbox, proxy.url)
    proxy.clear()


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(certificate, key) for 127.0.0.1, self-signed."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_front(sandbox: SandboxProcess, self_signed: tuple[str, str]) -> Iterator[FaultProxy]:
    """HTTPS with the self-signed certificate in front of the (plain HTTP) sandbox."""
    with FaultProxy(sandbox.url, tls=self_signed) as p:
        yield p
