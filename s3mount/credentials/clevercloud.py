"""Clever Cloud: Cellar add-on keys read through the OAuth1-signed Clever Cloud API.

The OAuth token comes from one of two places (profile ``token_source``):

* ``s3mount`` (default): ``login()`` runs the OAuth 1.0a dance with s3mount's own consumer
  (request token in a form body, user consent in the browser, access token) and stores token,
  secret and expiry in the profile's token store;
* ``clever-tools``: reuse ``clever login``: ``CLEVER_TOKEN`` + ``CLEVER_SECRET`` if both are set,
  else the active (first) profile of clever-tools.json (or its legacy single-token form). The consumer
  key/secret must then be clever-tools' own (``OAUTH_CONSUMER_KEY``/``OAUTH_CONSUMER_SECRET``, the
  file's ``overrides``, or the s3mount profile, in that order); s3mount only reads that file.

``fetch()`` finds the add-on (by id, real id or name; ``GET /v2/summary`` unless ``owner_id`` is
given), reads its env (or the beta v4 credentials API) and returns the add-on's long-lived keys. Keys
do not expire; the refresher re-reads them every ``reread_interval``, so a rotation (``renew``) is
picked up. A 401 means the OAuth token expired or was revoked: only a new login helps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from ..config import TokenStore
from ..store.base import KeySet
from .base import ProviderError
from .browser import Opener, run_consent
from .oauth1 import OAuth1Auth
from .wire import call, error_text, json_body, parse_time

log = logging.getLogger(__name__)

# Defaults and assumptions (PROVIDERS.md 3.3-3.8), in one place:
DEFAULT_API = "https://api.clever-cloud.com"
DEFAULT_REGION = "default"  # Cellar ignores the region (S10)
CELLAR_PROVIDER_ID = "cellar-addon"
WARN_BEFORE_EXPIRY = 7 * 86400.0  # A: warn a week before the OAuth token expires


class CleverCloudProvider:
    """See the module docstring; None for an argument means its default."""

    name = "clevercloud"

    def __init__(self, *, profile: str, store: TokenStore, addon: str,
                 consumer_key: str | None = None, consumer_secret: str | None = None,
                 api_url: str | None = None, token_source: str | None = None,
                 clever_tools_file: str | None = None, owner_id: str | None = None,
                 credentials_api: str | None = None, region: str | None = None,
                 bucket: str | None = None, endpoint_url: str | None = None,
                 redirect_port: int = 0, clock: Callable[[], float] = time.time) -> None:
        token_source = token_source or "s3mount"
        credentials_api = credentials_api or "env"
        if token_source not in ("s3mount", "clever-tools"):
            raise ProviderError(f"profile {profile}: token_source must be s3mount or clever-tools")
        if credentials_api not in ("env", "v4"):
            raise ProviderError(f"profile {profile}: credentials_api must be env or v4")
        self.profile = profile
        self.store = store
        self.addon = addon
        self._consumer = (consumer_key, consumer_secret)
        self.api_url = (api_url or DEFAULT_API).rstrip("/")
        self.token_source = token_source
        self.clever_tools_file = clever_tools_file
        self.owner_id = owner_id
        self.credentials_api = credentials_api
        self.region = region or DEFAULT_REGION
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.redirect_port = redirect_port
        self._clock = clock
        self._http = requests.Session()
        self._resolved: tuple[str, str, str, bool] | None = None  # owner, id, realId, personal

    # -- login (token_source = s3mount) --------------------------------------------------------

    def login(self, *, headless: bool = False, open_browser: Opener | None = None,
              read_line: Callable[[], str] | None = None) -> None:
        if self.token_source == "clever-tools":
            raise ProviderError(f"profile {self.profile} reuses clever-tools' login: run "
                                "`clever login` instead")
        ck, cs = self._consumer_pair(None)
        held: dict[str, str] = {}

        def build(callback: str) -> str:
            r = call(self._http, "POST", f"{self.api_url}/v2/oauth/request_token",
                     what="the Clever Cloud API", auth=OAuth1Auth(ck, cs, callback=callback,
                                                                  signature_type="BODY"),
                     headers={"Accept": "application/x-www-form-urlencoded"})
            self._check_oauth_step(r, "request token")
            held.update(_form(r.text, "oauth_token", "oauth_token_secret"))
            return f"{self.api_url}/v2/oauth/authorize?" + urlencode(
                {"oauth_token": held["oauth_token"]})

        answer = run_consent(build, headless=headless, open_browser=open_browser,
                             read_line=read_line, port=self.redirect_port)
        params = {k: v[0] for k, v in parse_qs(urlsplit(answer).query).items()}
        if params.get("oauth_token") != held.get("oauth_token") or "oauth_verifier" not in params:
            raise ProviderError("the Clever Cloud consent redirect does not carry this login's "
                                "token and verifier; run the login again")
        r = call(self._http, "POST", f"{self.api_url}/v2/oauth/access_token",
                 what="the Clever Cloud API",
                 auth=OAuth1Auth(ck, cs, token=held["oauth_token"],
                                 token_secret=held["oauth_token_secret"],
                                 verifier=params["oauth_verifier"], signature_type="BODY"),
                 headers={"Accept": "application/x-www-form-urlencoded"})
        held.clear()  # the request-token secret lives only as long as the dance (S14)
        self._check_oauth_step(r, "access token")
        got = _form(r.text, "oauth_token", "oauth_token_secret")
        self.store.save({"api_url": self.api_url, "consumer_key": ck, "token": got["oauth_token"],
                         "secret": got["oauth_token_secret"],
                         "expiration_date": got.get("expiration_date") or None})
        log.info("logged in to Clever Cloud for profile %s", self.profile)

    def _check_oauth_step(self, r: requests.Response, step: str) -> None:
        if r.status_code == 401:
            raise ProviderError(f"Clever Cloud refused the OAuth {step} ({_message(r)}): check "
                                f"consumer_key and consumer_secret of profile {self.profile}")
        if r.status_code != 200:
            raise ProviderError(f"Clever Cloud OAuth {step} failed: {_message(r)} "
                                f"(HTTP {r.status_code})")

    # -- the OAuth token -----------------------------------------------------------------------

    def _credentials(self) -> tuple[str, str, str, str]:
        """(consumer key, consumer secret, token, token secret) for resource calls; refuses an
        expired token without asking the API, and warns when it is about to expire."""
        if self.token_source == "clever-tools":
            token, secret, expiry, overrides = self._clever_tools_login()
            ck, cs = self._consumer_pair(overrides)
        else:
            stored = self.store.load()
            if not stored or not stored.get("token"):
                raise self._login_required("not logged in to Clever Cloud")
            ck, cs = self._consumer_pair(None)
            if stored.get("consumer_key") != ck or stored.get("api_url") != self.api_url:
                raise self._login_required("the stored Clever Cloud login is for another "
                                           "consumer or API")
            token, secret, expiry = stored["token"], stored["secret"], stored.get(
                "expiration_date")
        if expiry:
            left = parse_time(expiry) - self._clock()
            if left <= 0:
                raise self._login_required("the Clever Cloud OAuth token has expired")
            if left < WARN_BEFORE_EXPIRY:
                log.warning("the Clever Cloud OAuth token of profile %s expires in %.1f days; "
                            "log in again soon", self.profile, left / 86400)
        return ck, cs, token, secret

    def _consumer_pair(self, overrides: dict[str, Any] | None) -> tuple[str, str]:
        ck, cs = self._consumer
        if self.token_source == "clever-tools":
            ov = overrides or {}
            ck = os.environ.get("OAUTH_CONSUMER_KEY") or ov.get("OAUTH_CONSUMER_KEY") or ck
            cs = os.environ.get("OAUTH_CONSUMER_SECRET") or ov.get("OAUTH_CONSUMER_SECRET") or cs
        if not ck or not cs:
            raise ProviderError(f"profile {self.profile}: clevercloud needs consumer_key and "
                                "consumer_secret (or, with clever-tools, OAUTH_CONSUMER_KEY and "
                                "OAUTH_CONSUMER_SECRET)")
        return ck, cs

    def _clever_tools_login(self) -> tuple[str, str, str | None, dict[str, Any]]:
        """Token, secret, expiry and overrides of clever-tools' active login (PROVIDERS.md 3.3)."""
        token, secret = os.environ.get("CLEVER_TOKEN"), os.environ.get("CLEVER_SECRET")
        if token and secret:
            return token, secret, None, {}
        path = Path(self.clever_tools_file or os.environ.get("CONFIGURATION_FILE") or Path(
            os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            / "clever-cloud" / "clever-tools.json").expanduser()
        try:
            mode = path.stat().st_mode
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise self._login_required(f"no clever-tools login ({path} does not exist; run "
                                       "`clever login`)") from None
        except (OSError, ValueError) as exc:
            raise ProviderError(f"cannot read {path}: {exc}") from None
        if mode & 0o077:
            log.warning("%s is readable by group/others (mode %04o); consider chmod 600 it",
                        path, mode & 0o777)
        entry = (data.get("profiles") or [{}])[0] if "profiles" in data else data
        if not entry.get("token") or not entry.get("secret"):
            raise self._login_required(f"{path} holds no clever-tools login (run `clever login`)")
        return entry["token"], entry["secret"], entry.get("expirationDate"), \
            entry.get("overrides") or {}

    def _login_required(self, why: str) -> ProviderError:
        fix = "`clever login`" if self.token_source == "clever-tools" else \
            f"`s3mount login {self.profile}`"
        return ProviderError(f"{why}: run {fix}", login_required=True)

    # -- keys ----------------------------------------------------------------------------------

    def fetch(self) -> KeySet:
        ck, cs, token, secret = self._credentials()
        auth = OAuth1Auth(ck, cs, token=token, token_secret=secret)
        owner, addon_id, real_id, personal = self._resolve(auth)
        if self.credentials_api == "v4":
            body = self._get(f"/v4/cellar/organisations/{owner}/cellar/{real_id}/credentials",
                             auth)
            host, key_id, key_secret = body.get("host"), body.get("keyId"), body.get("keySecret")
        else:
            base = "/v2/self" if personal else f"/v2/organisations/{owner}"
            env = {e.get("name"): e.get("value")
                   for e in self._get(f"{base}/addons/{addon_id}/env", auth)}
            host, key_id, key_secret = (env.get("CELLAR_ADDON_HOST"),
                                        env.get("CELLAR_ADDON_KEY_ID"),
                                        env.get("CELLAR_ADDON_KEY_SECRET"))
        if not (host and key_id and key_secret):
            raise ProviderError(f"add-on {self.addon} has no Cellar credentials (is it a Cellar "
                                "add-on?)")
        endpoint = host if "://" in host else f"https://{host}"  # the env holds a bare host
        return KeySet(access_key=key_id, secret_key=key_secret, expires_at=None,
                      endpoint_url=self.endpoint_url or endpoint, region=self.region,
                      bucket=self.bucket)

    def _resolve(self, auth: OAuth1Auth) -> tuple[str, str, str, bool]:
        """(owner id, add-on id, real id, personal?) of the profile's add-on; cached."""
        if self._resolved is None:
            if self.owner_id:
                candidates = [(self.owner_id, a, False) for a in
                              self._get(f"/v2/organisations/{self.owner_id}/addons", auth)]
            else:
                summary = self._get("/v2/summary", auth)
                user = summary.get("user", {})
                candidates = [(user.get("id"), a, True) for a in user.get("addons", [])]
                for org in summary.get("organisations", []):
                    candidates += [(org.get("id"), a, False) for a in org.get("addons", [])]
            found = [(o, a, p) for o, a, p in candidates
                     if self.addon in (a.get("id"), a.get("realId"), a.get("name"))]
            if not found:
                raise ProviderError(f"no add-on {self.addon!r} visible to this Clever Cloud "
                                    "login")
            if len(found) > 1:
                raise ProviderError(f"add-on name {self.addon!r} is ambiguous; use its id "
                                    "(addon_...) in addon_id")
            owner, addon, personal = found[0]
            self._resolved = (owner, addon["id"], addon["realId"], personal)
        return self._resolved

    def _get(self, path: str, auth: OAuth1Auth) -> Any:
        r = call(self._http, "GET", f"{self.api_url}{path}", what="the Clever Cloud API",
                 auth=auth, headers={"Accept": "application/json"})
        if r.status_code == 401:
            raise self._login_required(f"Clever Cloud refused the OAuth token ({_message(r)})")
        if r.status_code == 404:
            self._resolved = None
            raise ProviderError(f"Clever Cloud: {_message(r)} (add-on {self.addon})")
        if r.status_code != 200:
            raise ProviderError(f"Clever Cloud API refused: {_message(r)} "
                                f"(HTTP {r.status_code})")
        return json_body(r, "the Clever Cloud API")


def _message(r: requests.Response) -> str:
    """The error's ``message`` (the vendor client reads message, then error)."""
    return error_text(r, "message", "error")


def _form(text: str, *required: str) -> dict[str, str]:
    values = {k: v[0] for k, v in parse_qs(text).items()}
    missing = [k for k in required if not values.get(k)]
    if missing:
        raise ProviderError(f"Clever Cloud OAuth answer lacks {', '.join(missing)}")
    return values
