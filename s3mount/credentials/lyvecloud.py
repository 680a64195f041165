"""Seagate Lyve Cloud: a service account made through the Account API v2, or LC2 STS keys.

``LyveCloudProvider`` (profile ``provider = "lyvecloud"``, PROVIDERS.md 4.1-4.5, 4.10): with the
Account API credentials (profile, or asked for by ``s3mount login`` and stored) it gets a session
token (cached in memory; on ``400 ExpiredToken``/``InvalidToken`` it logs in again once and retries
once), makes sure a ``bucket-names`` permission for the profile's bucket exists, and creates *one*
service account with it. The service account's secret is shown only once, so it is written to the
profile's token store (0600) the moment it arrives, before anything else can fail. Later fetches
return the stored keys after checking the account still exists and is enabled. If the admin set an
expiry, the account is rotated ``ROTATE_BEFORE`` ahead of ``expirationDate 23:59:59Z``: a new one is
created and stored, polled until ready, then the old one is disabled and deleted.

``LyveSTSProvider`` (``provider = "lc2"``, PROVIDERS.md 4.9): ``AssumeRole`` on the Lyve Cloud 2 STS
endpoint, signed with the user's long-lived IAM key, by botocore's STS client; temporary keys like
Cleverbase's, never stored.
"""

from __future__ import annotations

import getpass
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import requests

from ..config import ConfigError, TokenStore
from ..store.base import KeySet
from .aws import assume_role
from .base import ProviderError
from .wire import TIMEOUT, call

log = logging.getLogger(__name__)

# Defaults and assumptions (PROVIDERS.md 4), in one place:
DEFAULT_API = "https://api.lyvecloud.seagate.com/v2"
DEFAULT_REGION = "us-east-1"
TOKEN_REUSE_FRACTION = 0.9  # re-login after 90 % of the token's lifetime (4.10)
ROTATE_BEFORE = 86400.0  # rotate a service account a day before it expires (4.10)
READY_TIMEOUT = 120.0  # how long to wait for readyState / *NotReady to clear
BACKOFF = (1.0, 30.0)  # first and largest wait while polling readiness
TOKEN_ERRORS = ("ExpiredToken", "InvalidToken")
STS_DEFAULT_DURATION = 3600  # the STS default (900 s) would need renewing at once
STS_DURATION_RANGE = (900, 43200)
STS_ROLE_ARN = "arn:aws:iam::000000000000:role/s3mount"  # required, ignored by Lyve; botocore
# wants at least 20 characters


def _default_endpoint(region: str) -> str:
    return f"https://s3.{region}.lyvecloud.seagate.com"


class LyveCloudProvider:
    """Account API v2 + one service account per profile; see the module docstring."""

    name = "lyvecloud"

    def __init__(self, *, profile: str, store: TokenStore, account_id: str, bucket: str,
                 api_url: str | None = None, access_key: str | None = None,
                 secret: str | None = None, region: str | None = None,
                 endpoint_url: str | None = None, service_account: str | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 prompt: Callable[[str], str] = getpass.getpass) -> None:
        self.profile = profile
        self.store = store
        self.account_id = account_id
        self.bucket = bucket
        self.api_url = (api_url or DEFAULT_API).rstrip("/")
        self._account_keys = (access_key, secret)
        self.region = region or DEFAULT_REGION
        self.endpoint_url = endpoint_url or _default_endpoint(self.region)
        self.sa_prefix = service_account or f"s3mount-{profile}"
        self._clock = clock
        self._sleep = sleep
        self._prompt = prompt
        self._token: tuple[str, float] | None = None  # (token, reuse until)
        self._slash = ""  # becomes "/" if the server wants trailing slashes
        self._http = requests.Session()

    # -- login ---------------------------------------------------------------------------------

    def login(self, *, headless: bool = False, open_browser: Any = None,
              read_line: Any = None) -> None:
        """Ask for the Account API key if the profile lacks it, check it, store it."""
        ak, secret = self._account_keys
        prompted = not (ak and secret)
        if prompted:
            ak = ak or self._prompt(f"Lyve Cloud Account API access key for {self.account_id}: ")
            secret = secret or self._prompt("Lyve Cloud Account API secret: ")
            self._account_keys = (ak.strip(), secret.strip())
        self._token = None
        self._session_token()
        if prompted:
            self.store.update(account={"access_key": self._account_keys[0],
                                       "secret": self._account_keys[1]})
        log.info("Lyve Cloud Account API credentials of %s accepted", self.account_id)

    def _credentials(self) -> tuple[str, str]:
        ak, secret = self._account_keys
        if not (ak and secret):
            stored = (self.store.load() or {}).get("account") or {}
            ak, secret = stored.get("access_key"), stored.get("secret")
        if not (ak and secret):
            raise ProviderError(f"no Lyve Cloud Account API credentials for profile "
                                f"{self.profile}: run `s3mount login {self.profile}`",
                                login_required=True)
        return ak, secret

    # -- Account API plumbing ------------------------------------------------------------------

    def _session_token(self) -> str:
        if self._token is not None and self._clock() < self._token[1]:
            return self._token[0]
        ak, secret = self._credentials()
        r = self._send("POST", "/auth/token", None,
                       {"accountId": self.account_id, "accessKey": ak, "secret": secret})
        code = _code(r)
        if r.status_code == 403 and code == "AuthenticationFailed":
            raise ProviderError(f"Lyve Cloud refused the Account API credentials "
                                f"(AuthenticationFailed): check account_id and the access key "
                                f"and secret of profile {self.profile}")
        if r.status_code != 200:
            raise ProviderError(f"Lyve Cloud token request failed: {code or r.status_code}")
        body = r.json()
        try:
            lifetime = float(body["expirationSec"])  # a string on real servers, int in the docs
            token = body["token"]
        except (KeyError, TypeError, ValueError):
            raise ProviderError("Lyve Cloud token answer lacks token/expirationSec") from None
        self._token = (token, self._clock() + lifetime * TOKEN_REUSE_FRACTION)
        return token

    def _send(self, method: str, path: str, token: str | None,
              body: dict[str, Any] | None = None,
              params: dict[str, str] | None = None) -> requests.Response:
        """One request; on a 404/405 without a Lyve error code, retry with a trailing slash."""
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for slash in dict.fromkeys((self._slash, "/")):
            r = call(self._http, method, f"{self.api_url}{path}{slash}", what="the Lyve Cloud API",
                     json=body, params=params, headers=headers, allow_redirects=False)
            if r.status_code in (301, 404, 405) and _code(r) in (None, "NotFound"):
                continue
            self._slash = slash
            return r
        return r

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None,
             *, params: dict[str, str] | None = None,
             ok: tuple[int, ...] = (200,)) -> requests.Response:
        """An authenticated call that waits out ``409 *NotReady`` (propagation) with backoff."""
        for _ in self._backoff():
            r = self._authed(method, path, body, params)
            code = _code(r)
            if not (r.status_code == 409 and code and code.endswith("NotReady")):
                break
        if r.status_code not in ok:
            raise ProviderError(f"Lyve Cloud {method} {path.split('/')[1]} failed: "
                                f"{code or 'HTTP'} ({r.status_code})", retryable=r.status_code == 409)
        return r

    def _authed(self, method: str, path: str, body: dict[str, Any] | None,
                params: dict[str, str] | None) -> requests.Response:
        """One call with the session token; a refused token gets one fresh login and retry."""
        r = self._send(method, path, self._session_token(), body, params)
        if r.status_code == 400 and _code(r) in TOKEN_ERRORS:
            log.info("Lyve Cloud session token refused (%s); logging in again", _code(r))
            self._token = None
            r = self._send(method, path, self._session_token(), body, params)
            if r.status_code == 400 and _code(r) in TOKEN_ERRORS:
                raise ProviderError(f"Lyve Cloud refused a fresh session token ({_code(r)}); is "
                                    "the clock right?")
        return r

    def _backoff(self) -> Iterator[None]:
        """Turns of a polling loop: sleeps 1, 2, 4 ... 30 s between them, for ``READY_TIMEOUT``."""
        deadline = self._clock() + READY_TIMEOUT
        delay = BACKOFF[0]
        while True:
            yield
            if self._clock() >= deadline:
                return
            self._sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    def _wait_ready(self, path: str) -> dict[str, Any]:
        """Poll ``path`` until its ``readyState`` is true (new permissions/accounts propagate)."""
        for _ in self._backoff():
            doc = self._api("GET", path).json()
            if doc.get("readyState", True):
                return doc
        raise ProviderError(f"Lyve Cloud: {path} not ready after {READY_TIMEOUT:.0f}s",
                            retryable=True)

    # -- keys ----------------------------------------------------------------------------------

    def fetch(self) -> KeySet:
        stored = (self.store.load() or {}).get("service_account")
        if stored is not None:
            try:
                current = self._check(stored)
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                log.warning("cannot check the Lyve Cloud service account (%s); using the stored "
                            "keys", exc)
                return self._keys(stored)
            if current is not None:
                return self._keys(current)
        return self._keys(self._create(retiring=stored))

    def _check(self, sa: dict[str, Any]) -> dict[str, Any] | None:
        """``sa`` if it is alive and not about to expire; None if a new one is needed."""
        if (sa.get("account_id"), sa.get("bucket")) != (self.account_id, self.bucket):
            log.info("the profile now names another account or bucket; creating a service "
                     "account for it")
            return None
        r = self._api("GET", f"/service-accounts/{sa['id']}", ok=(200, 404))
        if r.status_code == 404:
            log.warning("Lyve Cloud service account %s is gone; creating a new one", sa["name"])
            return None
        if not r.json().get("enabled", True):
            raise ProviderError(f"Lyve Cloud service account {sa['name']} was disabled (by an "
                                "administrator?); re-enable it in the console, or delete it "
                                "there and s3mount will create a new one")
        expires = _sa_expiry(sa)
        if expires is not None and expires - self._clock() < ROTATE_BEFORE:
            log.info("Lyve Cloud service account %s expires soon; rotating", sa["name"])
            return None
        return sa

    def _create(self, retiring: dict[str, Any] | None) -> dict[str, Any]:
        perm = self._permission()
        name = f"{self.sa_prefix}-{secrets.token_hex(3)}"
        r = self._api("POST", "/service-accounts",
                      {"name": name, "description": f"s3mount profile {self.profile}",
                       "permissions": [perm]})
        body = r.json()
        sa = {"id": body["id"], "name": name, "accessKey": body["accessKey"],
              "secret": body["secret"], "expirationDate": body.get("expirationDate"),
              "permission": perm, "account_id": self.account_id, "bucket": self.bucket}
        self.store.update(service_account=sa)  # the secret is never shown again: persist now
        log.info("created Lyve Cloud service account %s", name)
        self._wait_ready(f"/service-accounts/{sa['id']}")
        if retiring is not None:
            self._retire(retiring)
        return sa

    def _retire(self, old: dict[str, Any]) -> None:
        """Disable then delete the replaced service account (best effort: the new one works)."""
        try:
            self._api("DELETE", f"/service-accounts/{old['id']}/enabled", ok=(200, 404))
            self._api("DELETE", f"/service-accounts/{old['id']}", ok=(200, 404))
        except ProviderError as exc:
            log.warning("could not retire the old Lyve Cloud service account %s (%s); delete "
                        "it in the console", old["name"], exc)

    def _permission(self) -> str:
        """Id of the ``s3mount-<bucket>`` permission (all operations on the bucket only)."""
        name = f"s3mount-{self.bucket}"[:128]
        found = [p for p in self._api("GET", "/permissions", params={"name": name}).json()
                 if p.get("name") == name]
        if found:
            pid = found[0]["id"]
        else:
            pid = self._api("POST", "/permissions", {
                "name": name, "description": "s3mount", "type": "bucket-names",
                "actions": "all-operations", "buckets": [self.bucket]}).json()["id"]
        self._wait_ready(f"/permissions/{pid}")
        return pid

    def _keys(self, sa: dict[str, Any]) -> KeySet:
        return KeySet(access_key=sa["accessKey"], secret_key=sa["secret"],
                      expires_at=_sa_expiry(sa), endpoint_url=self.endpoint_url,
                      region=self.region, bucket=self.bucket)


def _sa_expiry(sa: dict[str, Any]) -> float | None:
    """``expirationDate`` (a date) means valid through 23:59:59 UTC of that day (A)."""
    day = sa.get("expirationDate")
    if not day:
        return None
    d = datetime.fromisoformat(str(day)[:10])
    return datetime(d.year, d.month, d.day, 23, 59, 59, tzinfo=UTC).timestamp()


def _code(r: requests.Response) -> str | None:
    """The Lyve error code, trimmed (real servers send "AuthenticationFailed ")."""
    try:
        body = r.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code.strip() if isinstance(code, str) else None


class LyveSTSProvider:
    """Lyve Cloud 2: temporary keys from STS AssumeRole (PROVIDERS.md 4.9)."""

    name = "lc2"

    def __init__(self, *, profile: str, store: TokenStore, sts_url: str, bucket: str,
                 endpoint_url: str, access_key: str | None = None, secret_key: str | None = None,
                 duration: int | None = None, role_arn: str | None = None,
                 region: str | None = None,
                 prompt: Callable[[str], str] = getpass.getpass) -> None:
        self.profile = profile
        self.store = store
        self.sts_url = sts_url
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self._keys = (access_key, secret_key)
        self.duration = STS_DEFAULT_DURATION if duration is None else duration
        lo, hi = STS_DURATION_RANGE
        if not lo <= self.duration <= hi:
            raise ConfigError(f"profile {profile}: duration_seconds must be within {lo}-{hi}")
        self.role_arn = role_arn or STS_ROLE_ARN
        self.region = region or DEFAULT_REGION
        self._prompt = prompt

    def login(self, *, headless: bool = False, open_browser: Any = None,
              read_line: Any = None) -> None:
        ak, sk = self._keys
        if ak and sk:
            self.fetch()  # nothing to store: the profile has the keys; prove they work
            return
        ak = ak or self._prompt("Lyve Cloud access key id: ").strip()
        sk = sk or self._prompt("Lyve Cloud secret access key: ").strip()
        self._keys = (ak, sk)
        self.fetch()
        self.store.update(lc2={"access_key": ak, "secret_key": sk})

    def fetch(self) -> KeySet:
        ak, sk = self._keys
        if not (ak and sk):
            stored = (self.store.load() or {}).get("lc2") or {}
            ak, sk = stored.get("access_key"), stored.get("secret_key")
        if not (ak and sk):
            raise ProviderError(f"no Lyve Cloud access key for profile {self.profile}: run "
                                f"`s3mount login {self.profile}`", login_required=True)
        try:
            creds = assume_role(label="Lyve Cloud STS", sts_url=self.sts_url, region=self.region,
                                access_key=ak, secret_key=sk, role_arn=self.role_arn,
                                session_name=f"s3mount-{self.profile}", duration=self.duration,
                                timeout=TIMEOUT)
        except ProviderError as exc:
            if str(exc).startswith("bad AssumeRole"):
                raise ProviderError(f"profile {self.profile}: {exc}") from None
            raise
        expiration = creds["Expiration"]
        assert isinstance(expiration, datetime)
        return KeySet(access_key=str(creds["AccessKeyId"]),
                      secret_key=str(creds["SecretAccessKey"]),
                      session_token=str(creds["SessionToken"]),
                      expires_at=expiration.timestamp(), endpoint_url=self.endpoint_url,
                      region=self.region, bucket=self.bucket)
