"""Sandbox pieces run as child processes: start one, wait for its state file, stop it.

Each such process (the sandbox server, the fault proxy) publishes its URLs and tokens in a JSON
state file once it serves; the parent waits for that file, failing early if the child dies and
after a deadline if it hangs, and always stops the child on the way out.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any


def start(cmd: list[str], state_file: str, *, timeout: float, what: str,
          **popen: Any) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Run ``cmd`` and return it with the state it wrote to ``state_file``."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **popen)
    deadline = time.monotonic() + timeout
    while not os.path.exists(state_file):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            stop(proc)
            raise TimeoutError(f"{what} did not start within {timeout:.0f}s")
        time.sleep(0.05)
    with open(state_file) as f:
        return proc, json.load(f)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
