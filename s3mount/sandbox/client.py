"""Start a sandbox in a subprocess and talk to its admin API (for tests, bench and demo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import boto3
import requests
from botocore.config import Config

from ..store.base import KeySet
from . import procs
from .s3server import keys_from_json


class SandboxProcess:
    """A running ``python -m s3mount.sandbox``; a context manager that always stops it."""

    def __init__(self, *, providers: list[str] | None = None, credential_lifetime: float = 3600,
                 buckets: list[str] | None = None, log_file: str | None = None,
                 startup_timeout: float = 60) -> None:
        self._dir = tempfile.mkdtemp(prefix="s3mount-sandbox-")
        self.state_file = os.path.join(self._dir, "state.json")
        cmd = [sys.executable, "-m", "s3mount.sandbox", "--state-file", self.state_file,
               "--providers", ",".join(providers or []),
               "--credential-lifetime", str(credential_lifetime)]
        for b in buckets or []:
            cmd += ["--bucket", b]
        self._log = open(log_file or os.path.join(self._dir, "sandbox.log"), "ab")  # noqa: SIM115
        try:
            self.proc, self.state = procs.start(
                cmd, self.state_file, timeout=startup_timeout,
                what=f"the sandbox (log: {self._log.name})", stdout=self._log,
                stderr=subprocess.STDOUT)
        except BaseException:
            self._log.close()
            raise
        self.url: str = self.state["s3"]
        self.admin = keys_from_json(self.state["admin"])

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the process and remove its directory: the state file holds admin keys, and the
        log (unless ``log_file`` put it elsewhere) is only for diagnosing a start that failed."""
        procs.stop(self.proc)
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- admin API -----------------------------------------------------------------------------

    def _admin(self, call: str, body: dict[str, Any]) -> Any:
        r = requests.post(f"{self.url}/_sandbox/{call}", json=body, timeout=30,
                          headers={"X-Sandbox-Admin": self.state["admin_token"]})
        r.raise_for_status()
        return r.json()

    def create_bucket(self, name: str) -> None:
        self._admin("buckets", {"name": name})

    def issue_keys(self, buckets: list[str] | str, *, actions: list[str] | str = "*",
                   lifetime: float | None = None) -> KeySet:
        return keys_from_json(self._admin("keys", {"buckets": buckets, "actions": actions,
                                                   "lifetime": lifetime}))

    def revoke(self, access_key: str) -> None:
        self._admin("revoke", {"access_key": access_key})

    def revoke_bucket(self, bucket: str) -> int:
        """Revoke every key issued for ``bucket``; returns how many."""
        return int(self._admin("revoke", {"bucket": bucket})["revoked"])

    def advance_clock(self, seconds: float) -> None:
        self._admin("clock", {"advance": seconds})

    def s3(self, keys: KeySet | None = None) -> Any:
        """A boto3 client (admin keys unless given) for looking into buckets directly."""
        k = keys or self.admin
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=k.access_key, aws_secret_access_key=k.secret_key,
            aws_session_token=k.session_token,
            config=Config(s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )
