"""Fixtures: a sandbox S3 server per test session, a fresh bucket per test, and real FUSE mounts
(see mountlib.py), each in its own process, always unmounted in teardown."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountlib import Mount, Mounter

from s3mount.sandbox.client import SandboxProcess

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
