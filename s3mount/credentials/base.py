"""The provider interface.

Every provider (static, env, cleverbase, clevercloud, lyvecloud) implements ``Provider`` and
returns the ``KeySet`` the store defines (``store/base.py``): the store says what it needs, the
credential side produces it. The refresher and the store only ever see ``KeySet``.
"""

from __future__ import annotations

from typing import Protocol

from ..store.base import KeySet


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
