"""Run the sandbox (S3 server plus chosen provider emulators) in one process.

``python -m s3mount.sandbox --state-file F`` starts everything on free loopback ports and writes a
JSON description (URLs, admin token, emulator settings) to ``F`` with mode 0600, because it holds
secrets; then it serves until SIGTERM/SIGINT. Tests and ``s3mount demo`` read that file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import threading
from typing import Any, Protocol

from .clock import SandboxClock
from .s3server import S3Sandbox, _keys_json

log = logging.getLogger(__name__)

# provider name -> "module:class" of its emulator; each is started on its own port.
EMULATORS = {
    "cleverbase": "s3mount.sandbox.cleverbase:CleverbaseEmulator",
    "clevercloud": "s3mount.sandbox.clevercloud:CleverCloudEmulator",
    "lyvecloud": "s3mount.sandbox.lyvecloud:LyveCloudEmulator",
}


class Emulator(Protocol):
    """A provider API emulator living next to the S3 sandbox in the same process."""

    def __init__(self, sandbox: S3Sandbox, *, credential_lifetime: float) -> None: ...

    def start(self) -> dict[str, Any]:
        """Start serving on a free loopback port; return what a client needs (URLs, test ids)."""

    def stop(self) -> None: ...


def write_state(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with mode 0600 (it contains keys)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def start_all(providers: list[str], credential_lifetime: float,
              buckets: list[str]) -> tuple[S3Sandbox, list[Emulator], dict[str, Any]]:
    """Start the S3 server and emulators in this process; return them and the state to publish."""
    sandbox = S3Sandbox(clock=SandboxClock()).start()
    assert sandbox.admin is not None
    for b in buckets:
        sandbox.create_bucket(b)
    state: dict[str, Any] = {
        "s3": sandbox.url,
        "admin_token": sandbox.admin_token,
        "admin": _keys_json(sandbox.admin),
        "buckets": buckets,
        "pid": os.getpid(),
    }
    emulators: list[Emulator] = []
    for name in providers:
        module, cls = EMULATORS[name].split(":")
        emu = getattr(importlib.import_module(module), cls)(
            sandbox, credential_lifetime=credential_lifetime)
        state[name] = emu.start()
        emulators.append(emu)
    return sandbox, emulators, state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m s3mount.sandbox",
                                description="Run the local S3 server and provider emulators.")
    p.add_argument("--state-file", required=True, help="where to write URLs and keys (mode 0600)")
    p.add_argument("--providers", default="", help="comma-separated: " + ",".join(EMULATORS))
    p.add_argument("--credential-lifetime", type=float, default=3600.0)
    p.add_argument("--bucket", action="append", default=[], help="create this bucket at start")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="sandbox %(levelname)s %(name)s: %(message)s")
    for noisy in ("werkzeug", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    providers = [x for x in args.providers.split(",") if x]
    unknown = set(providers) - set(EMULATORS)
    if unknown:
        p.error(f"unknown provider(s): {', '.join(sorted(unknown))}")
    sandbox, emulators, state = start_all(providers, args.credential_lifetime, args.bucket)
    write_state(args.state_file, state)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    for emu in emulators:
        emu.stop()
    sandbox.stop()
    return 0
