"""The provider interface and the key set it returns.

Every provider (static, env, cleverbase, clevercloud, lyvecloud) implements ``Provider``; the refresher
and the store only ever see ``KeySet``. Secrets never appear in ``repr`` so a stray log line or
traceback cannot leak them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class KeySet:
    """One set of S3 credentials plus where to use them.

    ``expires_at`` is wall-clock epoch seconds (not a monotonic clock: it must keep counting through a
    suspend); None means the keys do not expire on their own.
    """

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    endpoint_url: str | None = None
    region: str | None = None
    bucket: str | None = None

    def remaining(self, now: float | None = None) -> float:
        """Seconds until expiry (``inf`` for keys that do not expire)."""
        if self.expires_at is None:
            return float("inf")
        return self.expires_at - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0


class ProviderError(Exception):
    """The provider refused or failed; ``retryable`` says whether trying later may help.

    ``login_required`` means no amount of retrying helps: the user must run ``s3mount login``.
    The message is shown to the user and must not contain secrets.
    """

    def __init__(self, message: str, *, retryable: bool = False, login_required: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.login_required = login_required


class Provider(Protocol):
    """A source of S3 keys.

    ``fetch`` returns a fresh key set (may block on HTTP; called from the refresher thread or the
    CLI, never from the FUSE loop). ``name`` is the provider's kind for ``status`` and logs.
    """

    name: str

    def fetch(self) -> KeySet: ...
