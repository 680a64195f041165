"""Cleverbase Storage API: an OIDC login once, then temporary S3 keys for the user's own bucket.

Two clocks (PROVIDERS.md 2.6): the OIDC access token (``expires_in``; no refresh token is documented)
and the S3 keys from ``POST /v1/credentials`` (1 h). ``login()`` runs the authorization code flow
(confidential client, PKCE S256, ``state``, ``nonce``, loopback or pasted redirect; see
``browser.py``) and stores the access token (and a refresh token if one is issued) in the profile's
token store. ``fetch()`` trades the access token for S3 keys; when the token is expired or refused it
uses the refresh token if there is one, and otherwise raises ``ProviderError(login_required=True)``:
only the user, in the Cleverbase app, can authenticate again.

The short-lived S3 keys are never stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc6749.errors import OAuth2Error
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from ..config import TokenStore
from ..store.base import KeySet
from .base import ProviderError
from .browser import Opener, run_consent
from .wire import call, error_text, json_body, parse_time

log = logging.getLogger(__name__)

# Defaults and assumptions (PROVIDERS.md 2.1-2.5), in one place:
DEFAULT_ISSUER = "https://connect.cleverbase.com"
DEFAULT_API = "https://storage-authorization.cleverbase.com"
STORAGE_SCOPE = "com.cleverbase.storage"
DEFAULT_SCOPE = f"openid {STORAGE_SCOPE}"  # A: the combination
DEFAULT_REGION = "us-east-1"  # A: not documented
FALLBACK_PATHS = {"authorization_endpoint": "/oauth2/authorize",  # when discovery is absent (A)
                  "token_endpoint": "/oauth2/token"}
TOKEN_EXPIRY_SLACK = 30.0
"""Treat the access token as expired this many seconds early (request time, clock skew)."""
ID_TOKEN_LEEWAY = 300
LOGIN_WARNING = 1800.0
"""Warn this long before an access token without a refresh token runs out (PROVIDERS.md 2.6)."""


class CleverbaseProvider:
    """See the module docstring. Everything comes from the profile (None = the default)."""

    name = "cleverbase"

    def __init__(self, *, profile: str, client_id: str, client_secret: str,
                 store: TokenStore, issuer: str | None = None, api_url: str | None = None,
                 scope: str | None = None, region: str | None = None,
                 bucket: str | None = None, endpoint_url: str | None = None,
                 redirect_port: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.profile = profile
        self.client_id = client_id
        self._client_secret = client_secret
        self.store = store
        self.issuer = (issuer or DEFAULT_ISSUER).rstrip("/")
        self.api_url = (api_url or DEFAULT_API).rstrip("/")
        self.scope = scope or DEFAULT_SCOPE
        self.region = region or DEFAULT_REGION
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.redirect_port = redirect_port
        self._clock = clock
        self._endpoints: dict[str, str] | None = None
        self._http = requests.Session()

    # -- login ---------------------------------------------------------------------------------

    def login(self, *, headless: bool = False, open_browser: Opener | None = None,
              read_line: Callable[[], str] | None = None) -> None:
        """Run the authorization code flow and store the tokens it yields."""
        endpoints = self.endpoints()
        verifier = generate_token(64)
        nonce = generate_token(24)
        session = self._oauth_session()
        state_box: list[str] = []

        def build(redirect_uri: str) -> str:
            session.redirect_uri = redirect_uri
            url, state = session.create_authorization_url(
                endpoints["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
            state_box.append(state)
            return url

        answer = run_consent(build, headless=headless, open_browser=open_browser,
                             read_line=read_line, port=self.redirect_port)
        params = parse_qs(urlsplit(answer).query)
        if "error" in params:
            desc = params.get("error_description", [""])[0]
            raise ProviderError(f"Cleverbase refused the login: {params['error'][0]}"
                                + (f" ({desc})" if desc else ""))
        if params.get("state", [None])[0] != state_box[-1]:
            raise ProviderError("the login redirect carries the wrong state (a stale or forged "
                                "redirect); run the login again")
        token = self._token_call(lambda: session.fetch_token(
            endpoints["token_endpoint"], authorization_response=answer, code_verifier=verifier,
            state=state_box[-1]))
        self._check_id_token(token.get("id_token"), nonce)
        self._save(token)
        log.info("logged in to Cleverbase for profile %s", self.profile)

    def endpoints(self) -> dict[str, str]:
        """Discovery if the issuer serves it, else the fixed paths (PROVIDERS.md 2.3.3)."""
        if self._endpoints is None:
            doc: dict[str, Any] = {}
            r = call(self._http, "GET", f"{self.issuer}/.well-known/openid-configuration",
                     what="the Cleverbase identity server")
            if r.status_code == 200:
                doc = json_body(r, "Cleverbase discovery")
                if doc.get("issuer", self.issuer).rstrip("/") != self.issuer:
                    raise ProviderError(f"Cleverbase discovery names issuer {doc.get('issuer')!r}, "
                                        f"not the configured {self.issuer!r}")
            else:
                log.info("no OpenID discovery at %s (HTTP %s); using the fixed paths",
                         self.issuer, r.status_code)
            self._endpoints = {k: doc.get(k) or self.issuer + path
                               for k, path in FALLBACK_PATHS.items()}
        return self._endpoints

    def _oauth_session(self) -> OAuth2Session:
        return OAuth2Session(self.client_id, self._client_secret, scope=self.scope,
                             code_challenge_method="S256",
                             token_endpoint_auth_method="client_secret_basic")

    def _token_call(self, fn: Callable[[], Any]) -> dict[str, Any]:
        """Run an authlib token request, mapping its failures to one clear ``ProviderError``."""
        try:
            return dict(fn())
        except (OAuthError, OAuth2Error) as exc:
            error = getattr(exc, "error", None) or "error"
            if error == "invalid_client":
                raise ProviderError(
                    f"Cleverbase rejected the client credentials (invalid_client): check "
                    f"client_id and client_secret of profile {self.profile}") from None
            if error == "invalid_grant":
                raise ProviderError("Cleverbase refused the grant (invalid_grant): the code or "
                                    f"refresh token is used or expired; run `s3mount login "
                                    f"{self.profile}`", login_required=True) from None
            raise ProviderError(f"Cleverbase token request failed: {error}") from None
        except requests.RequestException as exc:
            raise ProviderError(f"cannot reach the Cleverbase identity server "
                                f"({type(exc).__name__})", retryable=True) from None

    def _check_id_token(self, id_token: str | None, nonce: str) -> None:
        """Validate iss/aud/exp/nonce of the id_token (HS256 with the client secret, OIDC 10.1)."""
        if not id_token:
            raise ProviderError("Cleverbase returned no id_token")
        try:
            claims = dict(jwt.decode(id_token, OctKey.import_key(self._client_secret.encode()),
                                     algorithms=["HS256"]).claims)
            # iat is not judged: a server clock ahead of ours would make a fresh token look
            # "issued in the future"; exp and the nonce bound its use.
            claims.pop("iat", None)
            jwt.JWTClaimsRegistry(
                leeway=ID_TOKEN_LEEWAY, iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.client_id},
                nonce={"essential": True, "value": nonce},
                exp={"essential": True}).validate(claims)
        except (JoseError, ValueError) as exc:
            raise ProviderError(f"Cleverbase id_token is not valid ({type(exc).__name__})") \
                from None

    def _save(self, token: dict[str, Any]) -> dict[str, Any]:
        expires_in = float(token.get("expires_in") or 0)
        data = {"issuer": self.issuer, "client_id": self.client_id,
                "access_token": token["access_token"],
                "expires_at": self._clock() + expires_in if expires_in else None,
                "scope": token.get("scope", self.scope),
                "refresh_token": token.get("refresh_token")}
        self.store.save(data)
        return data

    # -- keys ----------------------------------------------------------------------------------

    def fetch(self) -> KeySet:
        tokens = self._load()
        expires_at = tokens.get("expires_at")
        if expires_at is not None and self._clock() >= expires_at - TOKEN_EXPIRY_SLACK:
            tokens = self._refresh(tokens, "expired")
        if expires_at is not None and not tokens.get("refresh_token") and \
                expires_at - self._clock() < LOGIN_WARNING:
            log.warning("the Cleverbase login of profile %s ends in %.0f min and cannot be "
                        "renewed without you: run `s3mount login %s` before then",
                        self.profile, max(expires_at - self._clock(), 0) / 60, self.profile)
        r = self._credentials_call(tokens["access_token"])
        if r.status_code == 401:
            tokens = self._refresh(tokens, "refused")
            r = self._credentials_call(tokens["access_token"])
        if r.status_code == 401:
            raise self._login_required(f"Cleverbase refused a fresh access token "
                                       f"({_detail(r)})")
        if r.status_code != 200:
            raise ProviderError(f"Cleverbase storage API refused: {_detail(r)} "
                                f"(HTTP {r.status_code})"
                                + (f"; the login must grant scope {STORAGE_SCOPE}"
                                   if r.status_code == 403 else ""))
        return self._keys(json_body(r, "Cleverbase storage API"))

    def _credentials_call(self, access_token: str) -> requests.Response:
        return call(self._http, "POST", f"{self.api_url}/v1/credentials",
                    what="the Cleverbase storage API",
                    headers={"Authorization": f"Bearer {access_token}",
                             "Accept": "application/json"})

    def _load(self) -> dict[str, Any]:
        tokens = self.store.load()
        if not tokens or not tokens.get("access_token"):
            raise self._login_required("not logged in to Cleverbase")
        if tokens.get("issuer") != self.issuer or tokens.get("client_id") != self.client_id:
            raise self._login_required("the stored Cleverbase login is for another issuer or "
                                       "client")
        return tokens

    def _refresh(self, tokens: dict[str, Any], why: str) -> dict[str, Any]:
        """Use the refresh token; without one, only a new login helps."""
        rt = tokens.get("refresh_token")
        if not rt:
            raise self._login_required(f"the Cleverbase access token is {why} and no refresh "
                                       "token was issued")
        session = self._oauth_session()
        token = self._token_call(lambda: session.refresh_token(
            self.endpoints()["token_endpoint"], refresh_token=rt))
        token.setdefault("refresh_token", rt)
        log.info("Cleverbase access token renewed with the refresh token")
        return self._save(token)

    def _login_required(self, why: str) -> ProviderError:
        return ProviderError(f"{why}: run `s3mount login {self.profile}`", login_required=True)

    def _keys(self, body: dict[str, Any]) -> KeySet:
        try:
            creds = body["credentials"]
            bucket = body["bucket"]
            keys = KeySet(access_key=creds["accessKeyId"], secret_key=creds["secretAccessKey"],
                          session_token=creds.get("sessionToken"),
                          expires_at=parse_time(creds["expiration"]),
                          endpoint_url=self.endpoint_url or body["endpoint"],
                          region=self.region, bucket=bucket)
        except (KeyError, TypeError):
            raise ProviderError("Cleverbase storage API answered without the expected fields "
                                "(bucket, endpoint, credentials)") from None
        if self.bucket and self.bucket != bucket:
            raise ProviderError(f"Cleverbase assigns bucket {bucket!r} to this login, but profile "
                                f"{self.profile} says {self.bucket!r}")
        return keys


def _detail(r: requests.Response) -> str:
    """The problem details' ``detail`` (or title)."""
    return error_text(r, "detail", "title")
