"""Plain keys: given explicitly, or found by the standard AWS chain (env vars, shared files)."""

from __future__ import annotations

from ..store.base import KeySet
from .aws import keys_from_chain


class StaticProvider:
    """Keys the user handed us; they never change on their own."""

    name = "static"

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys

    def fetch(self) -> KeySet:
        return self._keys


class EnvironmentProvider:
    """The standard AWS credential chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
    ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared config/credentials files.

    Re-reading on every fetch means a rotated key in ``~/.aws/credentials`` is picked up by the
    refresher without remounting.
    """

    name = "env"

    def __init__(self, profile: str | None = None, *, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        self._profile = profile
        self._endpoint_url = endpoint_url
        self._region = region
        self.source = "the AWS credential chain"
        """Where the last keys were found, for messages about them (never the keys)."""

    def fetch(self) -> KeySet:
        found = keys_from_chain(self._profile)
        self.source = found.source
        return KeySet(
            access_key=found.access_key,
            secret_key=found.secret_key,
            session_token=found.session_token,
            expires_at=found.expires_at,
            endpoint_url=self._endpoint_url,
            region=self._region or found.region,
        )

