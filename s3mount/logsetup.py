"""Logging for the mount process: stderr in the foreground, a file in the background.

botocore and urllib3 stay at WARNING even with ``-o debug``: at DEBUG they print request headers,
including the session token.

The file is size-bounded (``-o log_size=``, rotated with 3 older files kept) and mode 0600 like
the other state files: it names buckets, keys' last characters and file names. The background
process's stdout and stderr are that file too (libfuse and a crash print there), and follow it
when it rotates.
"""

from __future__ import annotations

import hashlib
import logging
import logging.handlers
import os
import stat
import sys
from typing import TextIO

from . import logsafe

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path_for(mountpoint: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "state")
    real = os.path.realpath(mountpoint)
    name = os.path.basename(real) or "root"
    digest = hashlib.sha256(real.encode()).hexdigest()[:8]
    return os.path.join(base, "s3mount", f"{name}-{digest}.log")


BACKUPS = 3
MiB = 1024 * 1024


def open_private(path: str) -> int:
    """``path`` opened for appending, created mode 0600; an older, wider log file is narrowed,
    but not something else named as the log (``-o log_file=/dev/null``)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fchmod(fd, 0o600)
    return fd


class PrivateRotatingHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file created 0600, with stdout and stderr moved to each new file."""

    def __init__(self, path: str, max_bytes: int, *, redirect_std: bool) -> None:
        self.redirect_std = redirect_std
        super().__init__(path, maxBytes=max_bytes, backupCount=BACKUPS if max_bytes else 0)

    def _open(self) -> TextIO:
        stream = os.fdopen(open_private(self.baseFilename), "a", encoding=self.encoding,
                           errors=self.errors)
        if self.redirect_std:
            for fd in (1, 2):
                os.dup2(stream.fileno(), fd, inheritable=True)
        return stream


def setup_logging(*, debug: bool, log_file: str | None, log_size: float = 10.0) -> None:
    """Log to ``log_file``, or to the file the background start named, or else to stderr.

    A file our parent started us on (``S3MOUNT_LOG_FILE``) is also our stdout and stderr, so
    those follow it through rotations; a ``-o log_file=`` in the foreground leaves them alone.
    """
    inherited = os.environ.pop("S3MOUNT_LOG_FILE", None)
    log_file = log_file or inherited
    handler: logging.Handler
    if log_file:
        handler = PrivateRotatingHandler(log_file, int(log_size * MiB),
                                         redirect_std=log_file == inherited)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logsafe.install()  # redact tokens, signatures and keys in whatever any library logs
