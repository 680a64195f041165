"""Plain keys: given explicitly, or found by the standard AWS chain (env vars, shared files)."""

from __future__ import annotations

import botocore.session

from .base import KeySet, ProviderError


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

    def fetch(self) -> KeySet:
        session = botocore.session.Session(profile=self._profile)
        try:
            creds = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise ProviderError(f"AWS credentials could not be read: {exc}") from None
        if creds is None:
            raise ProviderError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or use a profile"
            )
        frozen = creds.get_frozen_credentials()
        expiry = getattr(creds, "_expiry_time", None)
        return KeySet(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            session_token=frozen.token,
            expires_at=expiry.timestamp() if expiry is not None else None,
            endpoint_url=self._endpoint_url,
            region=self._region or session.get_config_variable("region"),
        )
