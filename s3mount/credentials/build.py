"""From a profile (a dict from ``config.load_profile``) to a ``Provider``.

The one place that knows which profile keys each provider kind needs; a missing one is a
``ConfigError`` naming it. Providers that need a login (cleverbase, clevercloud, lyvecloud, lc2)
also have ``login(headless=, open_browser=, read_line=)``, which ``s3mount login`` calls.

``interactive=True`` (a mount started from a terminal) lets the *first* fetch run that login when
none was stored; after the first keys, or with ``interactive=False`` (fstab, systemd, the
``credentials`` command), a missing login is a ``ProviderError(login_required=True)``, because
nobody is there to answer a browser or a prompt and the refresher thread must never block on one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..config import ConfigError, TokenStore
from ..store.base import KeySet
from .base import Provider, ProviderError
from .static import EnvironmentProvider, StaticProvider

log = logging.getLogger(__name__)


@runtime_checkable
class LoginProvider(Provider, Protocol):
    """A provider whose keys depend on a stored login."""

    def login(self, *, headless: bool = False, open_browser: Any = None,
              read_line: Any = None) -> None: ...


def provider_from_profile(profile: dict[str, Any], *, interactive: bool,
                          token_dir: Path | None = None) -> Provider:
    """Build the provider ``profile["provider"]`` names; ``token_dir`` overrides the store dir."""
    kind = profile.get("provider")
    name = profile.get("name", "default")

    def need(*keys: str) -> None:
        missing = [k for k in keys if not profile.get(k)]
        if missing:
            raise ConfigError(f"profile {name}: provider {kind} needs {', '.join(missing)}")

    def opt(key: str) -> Any:
        return profile.get(key) or None

    store = TokenStore(name, token_dir)
    location = {"bucket": opt("bucket"), "endpoint_url": opt("endpoint_url")}
    provider: Provider
    if kind == "static":
        need("access_key", "secret_key")
        return StaticProvider(KeySet(profile["access_key"], profile["secret_key"],
                                     opt("session_token"), region=opt("region"), **location))
    if kind == "env":
        return EnvironmentProvider(opt("aws_profile"), endpoint_url=opt("endpoint_url"),
                                   region=opt("region"))
    if kind == "cleverbase":
        from .cleverbase import CleverbaseProvider

        need("client_id", "client_secret")
        provider = CleverbaseProvider(
            profile=name, client_id=profile["client_id"], client_secret=profile["client_secret"],
            store=store, issuer=opt("issuer"), api_url=opt("api_url"), scope=opt("scope"),
            region=opt("region"), redirect_port=profile.get("redirect_port", 0), **location)
    elif kind == "clevercloud":
        from .clevercloud import CleverCloudProvider

        need("addon_id")
        if opt("token_source") != "clever-tools":
            need("consumer_key", "consumer_secret")
        provider = CleverCloudProvider(
            profile=name, store=store, addon=profile["addon_id"],
            consumer_key=opt("consumer_key"), consumer_secret=opt("consumer_secret"),
            api_url=opt("api_url"), token_source=opt("token_source"),
            clever_tools_file=opt("clever_tools_file"), owner_id=opt("owner_id"),
            credentials_api=opt("credentials_api"), region=opt("region"),
            redirect_port=profile.get("redirect_port", 0), **location)
    elif kind == "lyvecloud":
        from .lyvecloud import LyveCloudProvider

        need("account_id", "bucket")
        provider = LyveCloudProvider(
            profile=name, store=store, account_id=profile["account_id"],
            bucket=profile["bucket"], api_url=opt("api_url"),
            access_key=opt("account_access_key"), secret=opt("account_secret"),
            region=opt("region"), endpoint_url=opt("endpoint_url"),
            service_account=opt("service_account"))
    elif kind == "lc2":
        from .lyvecloud import LyveSTSProvider

        need("sts_url", "bucket", "endpoint_url")
        provider = LyveSTSProvider(
            profile=name, store=store, sts_url=profile["sts_url"], bucket=profile["bucket"],
            endpoint_url=profile["endpoint_url"], access_key=opt("access_key"),
            secret_key=opt("secret_key"), duration=profile.get("duration_seconds"),
            role_arn=opt("role_arn"), region=opt("region"))
    else:
        raise ConfigError(f"profile {name}: unknown provider {kind!r}")
    return FirstUseLogin(provider) if interactive else provider


class FirstUseLogin:
    """Runs the provider's login once if the first fetch finds none stored (see module doc)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.name = provider.name
        self._armed = True

    def login(self, **kwargs: Any) -> None:
        self.provider.login(**kwargs)

    def fetch(self) -> KeySet:
        try:
            keys = self.provider.fetch()
        except ProviderError as exc:
            if not (self._armed and exc.login_required):
                raise
            self._armed = False
            log.warning("%s", exc)
            self.provider.login()
            keys = self.provider.fetch()
        self._armed = False
        return keys
