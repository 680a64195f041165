"""A strict local Cleverbase: the Identification API (OIDC) and the Storage Authorization API.

Built from PROVIDERS.md 2.8. Two apps on two ports, as the vendor has two hosts:

* identity (``issuer``): ``/.well-known/openid-configuration`` (switchable to 404),
  ``/oauth2/authorize`` (auto-approves the *active user*: no QR scan to automate),
  ``/oauth2/token`` (client_secret_basic or client_secret_post; authorization_code, plus refresh_token
  when switched on; exact redirect_uri match; PKCE S256), ``/oauth2/userinfo``, ``/oauth2/jwks``;
* storage API (``api``): ``POST /v1/credentials`` answering RFC 9457 problem details on error, and on
  success provisioning ``cb-<sha256(client_id:sub)[:16]>`` in the sandbox and minting temporary keys
  limited to the four Cleverbase actions.

Every behaviour PROVIDERS.md tags as assumed is a field of ``CleverbaseSettings`` (defaults below),
switchable at run time with the ``configure`` admin hook. Admin hooks (POST ``/_admin/<hook>`` on the
issuer URL, header ``X-Emulator-Admin``): ``configure`` (any settings field), ``down``/``up``,
``fault`` (see ``emubase``),
``add_user`` ``{"name"}``, ``add_client`` ``{"client_id"?, "client_secret"?, "redirect_uris"?,
"scopes"?}`` (returns the client), ``mint_token`` ``{"claims"}`` (a signed access token with exactly
those claims, for the 400/401 cases), ``stats`` (request counters).

All expiry follows the sandbox clock.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote, urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Response, jsonify, redirect, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from .emubase import EmulatorBase
from .s3server import CLEVERBASE_ACTIONS, S3Sandbox

STORAGE_SCOPE = "com.cleverbase.storage"
# Assumptions of PROVIDERS.md 2.3-2.4 (A), in one place:
DEFAULT_ACCESS_TOKEN_LIFETIME = 3600.0  # expires_in: not documented
CODE_TTL = 60.0  # authorization code lifetime: not documented
SCOPES_SUPPORTED = ["openid", "profile", "email", STORAGE_SCOPE]
TEST_USERS = ["alice", "bob"]


@dataclass
class CleverbaseSettings:
    """The switchable (assumed) behaviours."""

    discovery: bool = True
    """Serve /.well-known/openid-configuration (else 404; the client must fall back)."""
    refresh_tokens: bool = False
    """Issue refresh tokens and accept grant_type=refresh_token (not documented: off)."""
    access_token_lifetime: float = DEFAULT_ACCESS_TOKEN_LIFETIME
    authorize_fault: str | None = None
    """"access_denied": the user's QR challenge expired; authorize redirects with that error."""
    expiration_format: str = "Z"
    """How credentials.expiration is written: "Z", "fraction" (microseconds, Z) or "offset"."""
    active_user: str = "alice"
    """Who auto-approves at /oauth2/authorize (``login_hint`` overrides it)."""


@dataclass
class Client:
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: list[str] | None = None  # None: any URL allowed, like the vendor's test stub
    scopes: list[str] | None = None  # None: every supported scope may be granted


@dataclass
class _Code:
    client_id: str
    redirect_uri: str | None
    scope: str
    nonce: str | None
    challenge: str | None
    user: str
    expires_at: float


class CleverbaseEmulator(EmulatorBase):
    """Identity server + storage authorization API; see the module docstring."""

    def __init__(self, sandbox: S3Sandbox, *, credential_lifetime: float = 3600.0) -> None:
        super().__init__(sandbox, credential_lifetime=credential_lifetime)
        self.settings = CleverbaseSettings()
        self.users: list[str] = list(TEST_USERS)
        self.clients: dict[str, Client] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, tuple[str, str, str]] = {}  # token -> (client_id, user, scope)
        self._key = OctKey.import_key(secrets.token_bytes(32))
        self.stats: Counter[str] = Counter()
        self.issuer = ""
        self.api = ""
        self.add_client()
        for name, fn in (("configure", self._hook_configure), ("add_user", self._hook_add_user),
                         ("add_client", self._hook_add_client), ("mint_token", self._hook_mint),
                         ("stats", lambda body: dict(self.stats))):
            self.add_hook(name, fn)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        self.issuer = self.serve(self._identity_app())
        self.api = self.serve(self._storage_app())
        first = next(iter(self.clients.values()))
        return {"issuer": self.issuer, "api": self.api, "client_id": first.client_id,
                "client_secret": first.client_secret, "admin_token": self.admin_token,
                "admin_url": self.issuer, "users": list(self.users)}

    def add_client(self, client_id: str | None = None, client_secret: str | None = None,
                   redirect_uris: list[str] | None = None,
                   scopes: list[str] | None = None) -> Client:
        c = Client(client_id or f"cb-client-{secrets.token_hex(6)}",
                   client_secret or secrets.token_urlsafe(32), redirect_uris, scopes)
        self.clients[c.client_id] = c
        return c

    def mint_access_token(self, claims: dict[str, Any]) -> str:
        return jwt.encode({"alg": "HS256"}, claims, self._key)

    def bucket_for(self, client_id: str, user: str) -> str:
        """The bucket ``user`` gets through ``client_id`` (for tests to look into)."""
        return _bucket(client_id, self._sub(client_id, user))

    # -- admin hooks ---------------------------------------------------------------------------

    def _hook_configure(self, body: dict) -> dict:
        names = {f.name for f in dataclasses.fields(CleverbaseSettings)}
        unknown = set(body) - names
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        if "active_user" in body and body["active_user"] not in self.users:
            raise ValueError(f"unknown user {body['active_user']!r}")
        self.settings = dataclasses.replace(self.settings, **body)
        return dataclasses.asdict(self.settings)

    def _hook_add_user(self, body: dict) -> dict:
        name = str(body["name"])
        if name not in self.users:
            self.users.append(name)
        return {"users": self.users}

    def _hook_add_client(self, body: dict) -> dict:
        c = self.add_client(body.get("client_id"), body.get("client_secret"),
                            body.get("redirect_uris"), body.get("scopes"))
        return dataclasses.asdict(c)

    def _hook_mint(self, body: dict) -> dict:
        return {"access_token": self.mint_access_token(dict(body["claims"]))}

    # -- identity server -----------------------------------------------------------------------

    def _identity_app(self) -> Any:
        app = self.new_app("cleverbase-identity")
        app.add_url_rule("/.well-known/openid-configuration", view_func=self._discovery)
        app.add_url_rule("/oauth2/authorize", view_func=self._authorize)
        app.add_url_rule("/oauth2/token", view_func=self._token, methods=["POST"])
        app.add_url_rule("/oauth2/userinfo", view_func=self._userinfo, methods=["GET", "POST"])
        app.add_url_rule("/oauth2/jwks", view_func=lambda: jsonify({"keys": []}))
        return app

    def _discovery(self) -> Any:
        self.stats["discovery"] += 1
        if not self.settings.discovery:
            return Response("Not Found\n", 404, mimetype="text/plain")
        i = self.issuer
        return jsonify({
            "issuer": i, "authorization_endpoint": f"{i}/oauth2/authorize",
            "token_endpoint": f"{i}/oauth2/token", "userinfo_endpoint": f"{i}/oauth2/userinfo",
            "jwks_uri": f"{i}/oauth2/jwks", "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"]
            + (["refresh_token"] if self.settings.refresh_tokens else []),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"], "scopes_supported": SCOPES_SUPPORTED,
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["HS256"],
        })

    def _authorize(self) -> Any:
        self.stats["authorize"] += 1
        q = request.args
        client = self.clients.get(q.get("client_id", ""))
        if client is None:  # never redirect to an unverified URI (RFC 6749 4.1.2.1)
            return Response("unknown client_id\n", 400, mimetype="text/plain")
        redirect_uri = q.get("redirect_uri")
        if redirect_uri is None:
            if not client.redirect_uris:
                return Response("redirect_uri required\n", 400, mimetype="text/plain")
            target = client.redirect_uris[0]
        elif client.redirect_uris is not None and redirect_uri not in client.redirect_uris:
            return Response("redirect_uri not registered\n", 400, mimetype="text/plain")
        else:
            target = redirect_uri
        state = q.get("state")
        scopes = q.get("scope", "").split()

        def back(**params: str) -> Any:
            if state is not None:
                params["state"] = state
            sep = "&" if "?" in target else "?"
            return redirect(f"{target}{sep}{urlencode(params)}", 302)

        problem = None
        if q.get("response_type") != "code":
            problem = "response_type must be code"
        elif "openid" not in scopes:
            problem = "scope must contain openid"
        elif not state or len(state.encode()) > 255:
            problem = "state is required (at most 255 bytes)"
        elif q.get("code_challenge") and q.get("code_challenge_method") != "S256":
            problem = "code_challenge_method must be S256"
        if problem:
            return back(error="invalid_request", error_description=problem)
        if self.settings.authorize_fault == "access_denied":
            return back(error="access_denied",
                        error_description="authentication challenge expired")
        user = q.get("login_hint") if q.get("login_hint") in self.users else \
            self.settings.active_user
        allowed = client.scopes if client.scopes is not None else SCOPES_SUPPORTED
        granted = " ".join(s for s in scopes if s in allowed)
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(client.client_id, redirect_uri, granted, q.get("nonce"),
                                  q.get("code_challenge"), user, self.now() + CODE_TTL)
        return back(code=code)

    def _token(self) -> Any:
        self.stats["token"] += 1
        client = self._client_auth()
        if client is None:
            self.stats["token_invalid_client"] += 1
            resp = jsonify(error="invalid_client", error_description="client authentication failed")
            resp.status_code = 401
            if request.authorization is not None:
                resp.headers["WWW-Authenticate"] = 'Basic realm="cleverbase"'
            return resp
        form = request.form
        grant = form.get("grant_type")
        if grant == "authorization_code":
            return self._grant_code(client, form)
        if grant == "refresh_token" and self.settings.refresh_tokens:
            return self._grant_refresh(client, form)
        return _oauth_error("invalid_request", "Invalid parameter grant_type")

    def _client_auth(self) -> Client | None:
        """client_secret_basic or client_secret_post (exactly one of them)."""
        auth = request.headers.get("Authorization", "")
        form = request.form
        if auth.lower().startswith("basic "):
            if "client_secret" in form:
                return None
            try:
                raw = base64.b64decode(auth[6:].strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            cid, _, secret = raw.partition(":")
            cid, secret = unquote(cid.replace("+", " ")), unquote(secret.replace("+", " "))
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(cid)
        if client is None or not secrets.compare_digest(secret, client.client_secret):
            return None
        return client

    def _grant_code(self, client: Client, form: Any) -> Any:
        code = self._codes.pop(form.get("code", ""), None)  # single use, even when refused
        if code is None or code.client_id != client.client_id or self.now() > code.expires_at:
            return _oauth_error("invalid_grant", "authorization code invalid, used or expired")
        if code.redirect_uri is not None and form.get("redirect_uri") != code.redirect_uri:
            return _oauth_error("invalid_grant", "redirect_uri does not match")
        if code.challenge is not None:
            verifier = form.get("code_verifier", "")
            if not verifier or create_s256_code_challenge(verifier) != code.challenge:
                return _oauth_error("invalid_grant", "PKCE verification failed")
        return self._issue(client, code.user, code.scope, code.nonce)

    def _grant_refresh(self, client: Client, form: Any) -> Any:
        held = self._refresh.pop(form.get("refresh_token", ""), None)  # rotated on use
        if held is None or held[0] != client.client_id:
            return _oauth_error("invalid_grant", "refresh token invalid")
        return self._issue(client, held[1], held[2], None)

    def _issue(self, client: Client, user: str, scope: str, nonce: str | None) -> Any:
        self.stats["tokens_issued"] += 1
        now = int(self.now())
        life = int(self.settings.access_token_lifetime)
        sub = self._sub(client.client_id, user)
        access = self.mint_access_token({"iss": self.issuer, "sub": sub,
                                         "client_id": client.client_id, "scope": scope,
                                         "iat": now, "exp": now + life})
        id_claims: dict[str, Any] = {"iss": self.issuer, "sub": sub, "aud": client.client_id,
                                     "iat": now, "exp": now + life}
        if nonce is not None:
            id_claims["nonce"] = nonce
        id_token = jwt.encode({"alg": "HS256"}, id_claims,
                              OctKey.import_key(client.client_secret.encode()))
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": life, "id_token": id_token, "scope": scope}
        if self.settings.refresh_tokens:
            rt = secrets.token_urlsafe(32)
            self._refresh[rt] = (client.client_id, user, scope)
            body["refresh_token"] = rt
        resp = jsonify(body)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def _userinfo(self) -> Any:
        claims = self._bearer_claims()
        if isinstance(claims, Response):
            return claims
        return jsonify({"sub": claims.get("sub")})

    @staticmethod
    def _sub(client_id: str, user: str) -> str:
        """Pairwise pseudonymous subject: the same user looks different to each client (S5)."""
        return hashlib.sha256(f"pairwise:{client_id}:{user}".encode()).hexdigest()[:32]

    # -- storage authorization API -------------------------------------------------------------

    def _storage_app(self) -> Any:
        app = self.new_app("cleverbase-storage")
        app.add_url_rule("/v1/credentials", view_func=self._credentials, methods=["POST"])
        return app

    def _bearer_claims(self) -> dict[str, Any] | Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _problem(401, "Unauthorized", "Authorization header absent",
                            'Bearer realm="cleverbase"')
        try:
            claims = dict(jwt.decode(auth[7:].strip(), self._key, algorithms=["HS256"]).claims)
        except (JoseError, ValueError):
            return _problem(401, "Unauthorized", "Jwt is invalid", 'Bearer error="invalid_token"')
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or self.now() >= exp:
            return _problem(401, "Unauthorized", f"Jwt expired at {_iso(exp)}",
                            'Bearer error="invalid_token", error_description="Jwt expired"')
        return claims

    def _credentials(self) -> Any:
        self.stats["credentials"] += 1
        claims = self._bearer_claims()
        if isinstance(claims, Response):
            return claims
        sub, client_id = claims.get("sub"), claims.get("client_id")
        if not sub or not client_id:
            return _problem(400, "Bad Request", "Bearer token lacks the sub or client_id claim")
        if STORAGE_SCOPE not in str(claims.get("scope", "")).split():
            return _problem(403, "Forbidden", f"Bearer token lacks scope {STORAGE_SCOPE}",
                            f'Bearer error="insufficient_scope", scope="{STORAGE_SCOPE}"')
        bucket = _bucket(str(client_id), str(sub))
        self.sandbox.create_bucket(bucket)
        keys = self.sandbox.issue_keys([bucket], actions=CLEVERBASE_ACTIONS,
                                       lifetime=self.credential_lifetime, label="cleverbase")
        self.stats["credentials_issued"] += 1
        return jsonify({"bucket": bucket, "endpoint": self.sandbox.url, "credentials": {
            "accessKeyId": keys.access_key, "secretAccessKey": keys.secret_key,
            "sessionToken": keys.session_token,
            "expiration": self._format_expiration(keys.expires_at or time.time())}})

    def _format_expiration(self, epoch: float) -> str:
        when = datetime.fromtimestamp(epoch, UTC)
        fmt = self.settings.expiration_format
        if fmt == "fraction":
            return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if fmt == "offset":
            return when.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="seconds")
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bucket(client_id: str, sub: str) -> str:
    """Stable per (client, user) pair, as the Storage API provisions it (PROVIDERS.md 2.8)."""
    return "cb-" + hashlib.sha256(f"{client_id}:{sub}".encode()).hexdigest()[:16]


def _iso(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "unknown"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _oauth_error(error: str, description: str, status: int = 400) -> Any:
    resp = jsonify(error=error, error_description=description)
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _problem(status: int, title: str, detail: str, www_authenticate: str | None = None) -> Any:
    """An RFC 9457 problem details response, as the Storage API answers errors."""
    resp = jsonify({"type": "about:blank", "title": title, "status": status, "detail": detail,
                    "instance": request.path})
    resp.status_code = status
    resp.mimetype = "application/problem+json"
    if www_authenticate:
        resp.headers["WWW-Authenticate"] = www_authenticate
    return resp
