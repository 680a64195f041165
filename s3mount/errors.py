"""The handful of error types every layer shares.

Each carries the errno the filesystem should answer with, so the FUSE adapter maps any of them to a
reply without knowing where it came from (s3ql's pattern: one error type that carries an errno).
"""

from __future__ import annotations

import errno as _errno


class S3MountError(Exception):
    """Base of our own errors; ``errno`` is what a file operation answers."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class NotFound(S3MountError):
    """The object (or bucket) does not exist."""

    errno = _errno.ENOENT


class AccessDenied(S3MountError):
    """The keys are valid but not allowed to do this, or no valid keys could be had."""

    errno = _errno.EACCES


class CredentialsExpired(AccessDenied):
    """The server says the keys are expired, unknown or revoked: renewing them may help."""


class PreconditionFailed(S3MountError):
    """The object changed under us (If-Match failed): the version a handle opened is gone."""

    errno = _errno.ESTALE


class Refused(S3MountError):
    """The server will not store this object as asked, however often it is asked (a key or an
    object it cannot hold): trying the same upload again cannot help."""


class Unavailable(S3MountError):
    """The server could not be reached or kept failing after bounded retries."""

    errno = _errno.EIO


class FsError(S3MountError):
    """A filesystem-level refusal with an explicit errno (ENOTEMPTY, ENAMETOOLONG, ...)."""
