"""Logging for the mount process: stderr in the foreground, a file in the background.

botocore and urllib3 stay at WARNING even with ``-o debug``: at DEBUG they print request headers,
including the session token.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys

from . import logsafe

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path_for(mountpoint: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "state")
    real = os.path.realpath(mountpoint)
    name = os.path.basename(real) or "root"
    digest = hashlib.sha256(real.encode()).hexdigest()[:8]
    return os.path.join(base, "s3mount", f"{name}-{digest}.log")


def setup_logging(*, debug: bool, log_file: str | None) -> None:
    log_file = log_file or os.environ.pop("S3MOUNT_LOG_FILE", None)
    handler: logging.Handler
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logsafe.install()  # redact tokens, signatures and keys in whatever any library logs
