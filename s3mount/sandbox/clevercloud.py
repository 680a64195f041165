"""A strict local Clever Cloud API: the OAuth1 dance, the add-on routes and Cellar keys.

Built from PROVIDERS.md 3.10, on one port (``api``):

* OAuth 1.0a: ``POST /v2/oauth/request_token[_query]``, ``GET /v2/oauth/authorize`` (auto-approves
  the *active user*: ``303`` to ``callback?oauth_token&oauth_verifier&user``),
  ``POST /v2/oauth/access_token[_query]``, ``GET /v2/oauth/rights``;
* resources (OAuth1-signed): ``GET /v2/self``, ``/v2/summary``, ``/v2/organisations``,
  ``/v2/{self|organisations/{id}}/addons[/{addonId}[/env]]``, ``GET /v2/self/tokens/current``,
  ``DELETE /v2/self/tokens/{token}``, and the beta Cellar API
  ``GET /v4/cellar/organisations/{owner}/cellar/{realId}/credentials`` and ``POST .../renew``.

Signatures are checked with oauthlib (``verify_hmac_sha512``, ``verify_hmac_sha1``,
``verify_plaintext``) on parameters taken from the Authorization header, the query or a form body
(exactly one of them); the 3-parameter PLAINTEXT form of the official JS client (no timestamp, no
nonce) is accepted too. Otherwise timestamps must be within ``TIMESTAMP_SKEW`` of the real clock (the
client signs with it; the sandbox clock only drives expiry) and a nonce is refused the second time.
Every failure of authentication is ``401 {"id": 401, "message": ..., "type": "error"}``.

Each Cellar add-on owns buckets in the sandbox and one long-lived key pair scoped to them
(``sandbox.issue_keys(buckets, lifetime=None)``). ``renew`` revokes the old key in the sandbox at once
(or after ``renew_grace`` seconds) and issues a new pair (a new key id too: the sandbox cannot change only a secret; the vendor keeps
the id, which PROVIDERS.md marks as assumed). ``CELLAR_ADDON_HOST`` is the sandbox URL *with* its
``http://`` scheme, since there is no TLS here; the client accepts both forms.

Test users: ``alice`` (personal add-on, plus organisation ``ACME`` with its own add-on) and ``bob``
(personal add-on). Admin hooks (POST ``/_admin/<hook>``, header ``X-Emulator-Admin``):
``configure`` (``token_lifetime``, ``active_user``, ``renew_grace``), ``down``/``up``, ``fault``
(see ``emubase``), ``rotate`` ``{"addon_id"}``,
``add_consumer`` ``{"key"?, "secret"?, "base_url"?}``, ``add_user`` ``{"name"}``,
``issue_token`` ``{"user", "consumer"?}`` -> ``{token, secret, expirationDate}`` (what ``clever login``
would leave in clever-tools.json), ``revoke_token`` ``{"token"}``, ``stats``.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Response, jsonify, redirect, request
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature as oauth_sig
from oauthlib.oauth1.rfc5849.utils import filter_oauth_params

from ..store.base import KeySet
from .emubase import EmulatorBase
from .s3server import S3Sandbox

# Assumptions of PROVIDERS.md 3.2-3.10 (A), in one place:
TIMESTAMP_SKEW = 300.0  # accepted oauth_timestamp distance from now
REQUEST_TOKEN_TTL = 600.0  # request tokens: 10 min, single use
DEFAULT_TOKEN_LIFETIME = 90 * 86400.0  # "3 months" for third-party consumers
CELLAR_PROVIDER = {"id": "cellar-addon", "name": "Cellar S3 storage"}
CELLAR_ENV_KEYS = ("CELLAR_ADDON_HOST", "CELLAR_ADDON_KEY_ID", "CELLAR_ADDON_KEY_SECRET")
RIGHTS = ["access_organisations", "access_organisations_bills",
          "access_organisations_consumption_statistics", "access_organisations_credit_count",
          "access_personal_information", "manage_organisations",
          "manage_organisations_applications", "manage_organisations_members",
          "manage_organisations_services", "manage_personal_information", "manage_ssh_keys"]


@dataclass
class CleverCloudSettings:
    token_lifetime: float = DEFAULT_TOKEN_LIFETIME
    active_user: str = "alice"
    """Who approves at /v2/oauth/authorize."""
    renew_grace: float = 0.0
    """Seconds the old Cellar key keeps working after a renew (A: 0, invalidated at once)."""


@dataclass
class Consumer:
    key: str
    secret: str = field(repr=False)
    base_url: str = "http://127.0.0.1"
    name: str = "s3mount"


@dataclass
class User:
    id: str
    name: str
    email: str


@dataclass
class Addon:
    id: str
    real_id: str
    name: str
    owner: str  # user id or organisation id
    buckets: list[str]
    keys: KeySet
    creation: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class _Token:
    secret: str = field(repr=False)
    consumer: str
    user: str | None = None
    callback: str | None = None
    verifier: str | None = None
    created: float = 0.0
    expires: float | None = None
    revoked: bool = False
    last_used: float | None = None


class AuthFailure(Exception):
    """Becomes the 401 (or 400 for malformed requests) JSON error."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class _NotFound(Exception):
    """Becomes a 404 JSON error."""


class CleverCloudEmulator(EmulatorBase):
    """The Clever Cloud API emulator; see the module docstring."""

    def __init__(self, sandbox: S3Sandbox, *, credential_lifetime: float = 3600.0) -> None:
        super().__init__(sandbox, credential_lifetime=credential_lifetime)
        self.settings = CleverCloudSettings()
        self.consumers: dict[str, Consumer] = {}
        self.users: dict[str, User] = {}  # by name
        self.orgs: dict[str, dict[str, Any]] = {}
        self.addons: dict[str, Addon] = {}
        self._request_tokens: dict[str, _Token] = {}
        self._access_tokens: dict[str, _Token] = {}
        self._nonces: dict[tuple[str, str, str], float] = {}
        self.stats: Counter[str] = Counter()
        self.url = ""
        for name, fn in (("configure", self._hook_configure), ("rotate", self._hook_rotate),
                         ("add_consumer", self._hook_add_consumer),
                         ("add_user", self._hook_add_user), ("issue_token", self._hook_issue),
                         ("revoke_token", self._hook_revoke), ("stats", lambda b: dict(self.stats))):
            self.add_hook(name, fn)

    # -- lifecycle and fixtures ----------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        self.url = self.serve(self._app())
        s3mount = self.add_consumer(name="s3mount")
        tools = self.add_consumer(name="clever-tools")
        alice = self.add_user("alice")
        self.add_user("bob")
        org = self.add_org("ACME", [alice.id])
        self.add_addon(org["id"], "acme-cellar")
        return {"api": self.url, "consumer_key": s3mount.key, "consumer_secret": s3mount.secret,
                "tools_consumer_key": tools.key, "tools_consumer_secret": tools.secret,
                "admin_token": self.admin_token, "admin_url": self.url,
                "users": {u.name: {"id": u.id, "addons": self.addons_of(u.id)}
                          for u in self.users.values()},
                "organisations": {o["id"]: {"name": o["name"], "addons": self.addons_of(o["id"])}
                                  for o in self.orgs.values()}}

    def add_consumer(self, key: str | None = None, secret: str | None = None,
                     base_url: str = "http://127.0.0.1", name: str = "s3mount") -> Consumer:
        c = Consumer(key or secrets.token_hex(10), secret or secrets.token_urlsafe(24), base_url,
                     name)
        self.consumers[c.key] = c
        return c

    def add_user(self, name: str) -> User:
        """A user with a personal Cellar add-on (and its bucket)."""
        if name in self.users:
            return self.users[name]
        user = User(f"user_{uuid.uuid4()}", name, f"{name}@example.com")
        self.users[name] = user
        self.add_addon(user.id, f"{name}-cellar")
        return user

    def add_org(self, name: str, members: list[str]) -> dict[str, Any]:
        org = {"id": f"orga_{uuid.uuid4()}", "name": name, "members": members}
        self.orgs[org["id"]] = org
        return org

    def add_addon(self, owner: str, name: str) -> Addon:
        suffix = uuid.uuid4()
        bucket = f"cc-{name}-{str(suffix)[:8]}"
        self.sandbox.create_bucket(bucket)
        keys = self.sandbox.issue_keys([bucket], lifetime=None, label="cellar")
        addon = Addon(f"addon_{suffix}", f"cellar_{suffix}", name, owner, [bucket], keys)
        self.addons[addon.id] = addon
        return addon

    def addons_of(self, owner: str) -> list[dict[str, Any]]:
        return [{"id": a.id, "realId": a.real_id, "name": a.name, "buckets": a.buckets}
                for a in self.addons.values() if a.owner == owner]

    def rotate(self, addon_id: str) -> KeySet:
        """Renew an add-on's keys: the old key stops working at once."""
        addon = self._addon_by_any(addon_id)
        old = addon.keys
        addon.keys = self.sandbox.issue_keys(addon.buckets, lifetime=None, label="cellar")
        if self.settings.renew_grace > 0:  # then it answers ExpiredToken, like a lapsed key
            assert self.sandbox.gate is not None
            self.sandbox.gate.register(old.access_key, self.now() + self.settings.renew_grace)
        else:
            self.sandbox.revoke(old.access_key)
        self.stats["rotations"] += 1
        return addon.keys

    def issue_access_token(self, user: str, consumer: str) -> tuple[str, _Token]:
        now = self.now()
        token = secrets.token_hex(16)
        rec = _Token(secrets.token_urlsafe(24), consumer, user=user, created=now,
                     expires=now + self.settings.token_lifetime)
        self._access_tokens[token] = rec
        return token, rec

    # -- admin hooks ---------------------------------------------------------------------------

    def _hook_configure(self, body: dict) -> dict:
        names = {f.name for f in dataclasses.fields(CleverCloudSettings)}
        if set(body) - names:
            raise ValueError(f"unknown settings {sorted(set(body) - names)}")
        if "active_user" in body and body["active_user"] not in self.users:
            raise ValueError(f"unknown user {body['active_user']!r}")
        self.settings = dataclasses.replace(self.settings, **body)
        return dataclasses.asdict(self.settings)

    def _hook_rotate(self, body: dict) -> dict:
        return {"access_key": self.rotate(body["addon_id"]).access_key}

    def _hook_add_consumer(self, body: dict) -> dict:
        c = self.add_consumer(body.get("key"), body.get("secret"),
                              body.get("base_url", "http://127.0.0.1"), body.get("name", "test"))
        return dataclasses.asdict(c)

    def _hook_add_user(self, body: dict) -> dict:
        u = self.add_user(str(body["name"]))
        return {"id": u.id, "addons": self.addons_of(u.id)}

    def _hook_issue(self, body: dict) -> dict:
        user = self.users[body["user"]]
        consumer = body.get("consumer") or next(
            c.key for c in self.consumers.values() if c.name == "clever-tools")
        token, rec = self.issue_access_token(user.id, consumer)
        return {"token": token, "secret": rec.secret, "expirationDate": _iso(rec.expires)}

    def _hook_revoke(self, body: dict) -> None:
        self._access_tokens[body["token"]].revoked = True

    # -- OAuth1 verification -------------------------------------------------------------------

    def _verify(self, token_kind: str | None) -> tuple[dict[str, str], Consumer, str | None,
                                                       _Token | None]:
        """Check the request's OAuth1 signature; return (oauth params, consumer, token, record).

        ``token_kind``: None (request-token step), "request" or "access".
        """
        body = request.get_data(as_text=True) if request.mimetype == \
            "application/x-www-form-urlencoded" else ""
        headers = dict(request.headers)
        query = urlsplit(request.url).query
        sources = [
            oauth_sig.collect_parameters(headers=headers, exclude_oauth_signature=False,
                                         with_realm=True),
            oauth_sig.collect_parameters(body=body, exclude_oauth_signature=False),
            oauth_sig.collect_parameters(uri_query=query, exclude_oauth_signature=False)]
        with_oauth = [filter_oauth_params(s) for s in sources if filter_oauth_params(s)]
        if not with_oauth:
            raise AuthFailure("Missing OAuth parameters")
        if len(with_oauth) > 1:
            raise AuthFailure("OAuth parameters must come from exactly one place", 400)
        if len(dict(with_oauth[0])) != len(with_oauth[0]):
            raise AuthFailure("Duplicate OAuth parameters", 400)
        oauth = dict(with_oauth[0])
        consumer = self.consumers.get(oauth.get("oauth_consumer_key", ""))
        if consumer is None:
            raise AuthFailure("Unknown consumer")
        token_key = oauth.get("oauth_token")
        record = None
        if token_kind is not None:
            table = self._request_tokens if token_kind == "request" else self._access_tokens
            record = table.get(token_key or "")
            if record is None or record.consumer != consumer.key:
                raise AuthFailure("Invalid or unknown token")
        req = OAuthRequest(request.base_url + (f"?{query}" if query else ""), request.method, body,
                           headers)
        params = [p for s in sources for p in s]
        req.params = [(k, v) for k, v in params if k not in ("oauth_signature", "realm")]
        req.signature = oauth.get("oauth_signature", "")
        method = oauth.get("oauth_signature_method", "PLAINTEXT")
        token_secret = record.secret if record is not None else None
        if "oauth_timestamp" in oauth or "oauth_nonce" in oauth or method != "PLAINTEXT":
            self._check_freshness(oauth, consumer.key)
        if oauth.get("oauth_version", "1.0") != "1.0":
            raise AuthFailure("Unsupported oauth_version")
        verify = {"HMAC-SHA512": oauth_sig.verify_hmac_sha512,
                  "HMAC-SHA1": oauth_sig.verify_hmac_sha1,
                  "PLAINTEXT": oauth_sig.verify_plaintext}.get(method)
        if verify is None:
            raise AuthFailure(f"Unsupported signature method {method}")
        if not verify(req, consumer.secret, token_secret):
            self.stats["bad_signature"] += 1
            raise AuthFailure("Invalid signature")
        return oauth, consumer, token_key, record

    def _check_freshness(self, oauth: dict[str, str], consumer: str) -> None:
        ts, nonce = oauth.get("oauth_timestamp", ""), oauth.get("oauth_nonce", "")
        if not ts.isdigit() or not nonce:
            raise AuthFailure("oauth_timestamp and oauth_nonce are required", 400)
        now = time.time()
        if abs(now - int(ts)) > TIMESTAMP_SKEW:
            raise AuthFailure("Expired timestamp")
        for k, seen in list(self._nonces.items()):
            if now - seen > 2 * TIMESTAMP_SKEW:
                del self._nonces[k]
        key = (consumer, nonce, ts)
        if key in self._nonces:
            self.stats["replays"] += 1
            raise AuthFailure("Nonce already used")
        self._nonces[key] = now

    def _authenticated(self) -> tuple[User, str]:
        """The user behind a signed resource request (and the token used)."""
        _, _, token, rec = self._verify("access")
        assert rec is not None and token is not None
        if rec.revoked:
            raise AuthFailure("Token revoked")
        if rec.expires is not None and self.now() >= rec.expires:
            raise AuthFailure("Token expired")
        rec.last_used = self.now()
        return next(u for u in self.users.values() if u.id == rec.user), token

    # -- app -----------------------------------------------------------------------------------

    def unavailable(self) -> Response:
        return _error(503, "Service unavailable")

    def _app(self) -> Any:
        app = self.new_app("clevercloud-api")

        @app.errorhandler(AuthFailure)
        def _auth_failure(exc: AuthFailure) -> Any:
            self.stats[f"status_{exc.status}"] += 1
            return _error(exc.status, str(exc))

        @app.errorhandler(_NotFound)
        def _not_found(exc: _NotFound) -> Any:
            return _error(404, str(exc))

        rules = [
            ("/v2/oauth/request_token", self._request_token, ["POST"]),
            ("/v2/oauth/request_token_query", self._request_token, ["POST"]),
            ("/v2/oauth/authorize", self._authorize, ["GET"]),
            ("/v2/oauth/access_token", self._access_token, ["POST"]),
            ("/v2/oauth/access_token_query", self._access_token, ["POST"]),
            ("/v2/oauth/rights", lambda: jsonify({r: True for r in RIGHTS}), ["GET"]),
            ("/v2/self", self._self, ["GET"]),
            ("/v2/summary", self._summary, ["GET"]),
            ("/v2/organisations", self._organisations, ["GET"]),
            ("/v2/self/addons", self._addons, ["GET"]),
            ("/v2/self/addons/<addon_id>", self._addon, ["GET"]),
            ("/v2/self/addons/<addon_id>/env", self._addon_env, ["GET"]),
            ("/v2/organisations/<org>/addons", self._addons, ["GET"]),
            ("/v2/organisations/<org>/addons/<addon_id>", self._addon, ["GET"]),
            ("/v2/organisations/<org>/addons/<addon_id>/env", self._addon_env, ["GET"]),
            ("/v2/self/tokens/current", self._token_current, ["GET"]),
            ("/v2/self/tokens/<token>", self._token_delete, ["DELETE"]),
            ("/v4/cellar/organisations/<owner>/cellar/<real_id>/credentials", self._v4_creds,
             ["GET"]),
            ("/v4/cellar/organisations/<owner>/cellar/<real_id>/credentials/renew",
             self._v4_renew, ["POST"]),
        ]
        for path, view, methods in rules:
            app.add_url_rule(path, endpoint=f"{view.__name__}:{path}", view_func=view,
                             methods=methods)
        return app

    def _request_token(self) -> Any:
        self.stats["request_token"] += 1
        oauth, consumer, _, _ = self._verify(None)
        callback = oauth.get("oauth_callback")
        if not callback:
            raise AuthFailure("oauth_callback is required", 400)
        if callback != "oob" and urlsplit(callback).hostname != urlsplit(consumer.base_url).hostname:
            raise AuthFailure("oauth_callback does not match the consumer's base URL")
        token = secrets.token_hex(16)
        self._request_tokens[token] = _Token(secrets.token_urlsafe(24), consumer.key,
                                             callback=callback, created=self.now())
        return _form({"oauth_token": token,
                      "oauth_token_secret": self._request_tokens[token].secret,
                      "oauth_callback_confirmed": "true"})

    def _authorize(self) -> Any:
        self.stats["authorize"] += 1
        token = request.args.get("oauth_token", "")
        rec = self._request_tokens.get(token)
        if rec is None or rec.verifier is not None or \
                self.now() - rec.created > REQUEST_TOKEN_TTL:
            return _error(401, "Invalid or expired request token")
        user = self.users[self.settings.active_user]
        rec.user, rec.verifier = user.id, secrets.token_urlsafe(16)
        callback = rec.callback or ""
        sep = "&" if "?" in callback else "?"
        return redirect(f"{callback}{sep}" + urlencode(
            {"oauth_token": token, "oauth_verifier": rec.verifier, "user": user.id}), 303)

    def _access_token(self) -> Any:
        self.stats["access_token"] += 1
        oauth, consumer, token, rec = self._verify("request")
        assert rec is not None and token is not None
        del self._request_tokens[token]  # single use, even when refused below
        if rec.verifier is None or not secrets.compare_digest(
                oauth.get("oauth_verifier", ""), rec.verifier):
            raise AuthFailure("Invalid verifier")
        if self.now() - rec.created > REQUEST_TOKEN_TTL:
            raise AuthFailure("Request token expired")
        assert rec.user is not None
        access, arec = self.issue_access_token(rec.user, consumer.key)
        return _form({"oauth_token": access, "oauth_token_secret": arec.secret,
                      "expiration_date": _iso(arec.expires)})

    def _self(self) -> Any:
        user, _ = self._authenticated()
        return jsonify({"id": user.id, "email": user.email, "name": user.name, "avatar": None,
                        "lang": "EN", "phone": None, "admin": False,
                        "creationDate": 1600000000000, "preferredMFA": "NONE"})

    def _summary(self) -> Any:
        user, _ = self._authenticated()
        brief = [{"id": a["id"], "realId": a["realId"], "name": a["name"]}
                 for a in self.addons_of(user.id)]
        orgs = [{"id": o["id"], "name": o["name"], "applications": [], "consumers": [],
                 "addons": [{"id": a["id"], "realId": a["realId"], "name": a["name"]}
                            for a in self.addons_of(o["id"])]}
                for o in self.orgs.values() if user.id in o["members"]]
        return jsonify({"user": {"id": user.id, "name": user.name, "applications": [],
                                 "consumers": [], "addons": brief}, "organisations": orgs})

    def _organisations(self) -> Any:
        user, _ = self._authenticated()
        return jsonify([{"id": o["id"], "name": o["name"]} for o in self.orgs.values()
                        if user.id in o["members"]])

    def _owner(self, user: User, org: str | None) -> str:
        if org is None:
            return user.id
        o = self.orgs.get(org)
        if o is None or user.id not in o["members"]:
            raise _NotFound("Organisation not found")
        return org

    def _addon_json(self, a: Addon) -> dict[str, Any]:
        return {"id": a.id, "name": a.name, "realId": a.real_id, "region": "par",
                "zoneId": "par", "provider": CELLAR_PROVIDER,
                "plan": {"id": "plan_cellar", "name": "S", "slug": "s"},
                "creationDate": a.creation, "configKeys": list(CELLAR_ENV_KEYS)}

    def _find_addon(self, user: User, org: str | None, addon_id: str) -> Addon:
        owner = self._owner(user, org)
        a = self.addons.get(addon_id)
        if a is None or a.owner != owner:
            raise _NotFound("Add-on not found")
        return a

    def _addons(self, org: str | None = None) -> Any:
        user, _ = self._authenticated()
        owner = self._owner(user, org)
        return jsonify([self._addon_json(a) for a in self.addons.values() if a.owner == owner])

    def _addon(self, addon_id: str, org: str | None = None) -> Any:
        user, _ = self._authenticated()
        return jsonify(self._addon_json(self._find_addon(user, org, addon_id)))

    def _addon_env(self, addon_id: str, org: str | None = None) -> Any:
        user, _ = self._authenticated()
        a = self._find_addon(user, org, addon_id)
        self.stats["env"] += 1
        return jsonify([{"name": "CELLAR_ADDON_HOST", "value": self.sandbox.url},
                        {"name": "CELLAR_ADDON_KEY_ID", "value": a.keys.access_key},
                        {"name": "CELLAR_ADDON_KEY_SECRET", "value": a.keys.secret_key}])

    def _token_current(self) -> Any:
        user, token = self._authenticated()
        rec = self._access_tokens[token]
        return jsonify({"token": token, "consumer": {"key": rec.consumer},
                        "creationDate": _iso(rec.created), "expirationDate": _iso(rec.expires),
                        "lastUtilisation": _iso(rec.last_used), "rights": {r: True for r in RIGHTS}})

    def _token_delete(self, token: str) -> Any:
        user, _ = self._authenticated()
        rec = self._access_tokens.get(token)
        if rec is None or rec.user != user.id:
            return _error(404, "Token not found")
        rec.revoked = True
        return Response(status=204)

    def _v4_addon(self, owner: str, real_id: str) -> Addon:
        user, _ = self._authenticated()
        a = next((a for a in self.addons.values() if a.real_id == real_id), None)
        if a is None or a.owner != owner or (owner != user.id and user.id not in
                                              self.orgs.get(owner, {}).get("members", [])):
            raise _NotFound("Cellar not found")
        return a

    def _v4_creds(self, owner: str, real_id: str) -> Any:
        a = self._v4_addon(owner, real_id)
        return jsonify({"host": self.sandbox.url, "keyId": a.keys.access_key,
                        "keySecret": a.keys.secret_key})

    def _v4_renew(self, owner: str, real_id: str) -> Any:
        self.rotate(self._v4_addon(owner, real_id).id)
        return Response(status=204)

    def _addon_by_any(self, ident: str) -> Addon:
        for a in self.addons.values():
            if ident in (a.id, a.real_id, a.name):
                return a
        raise KeyError(ident)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _error(status: int, message: str) -> Any:
    resp = jsonify({"id": status, "message": message, "type": "error"})
    resp.status_code = status
    return resp


def _form(values: dict[str, str | None]) -> Response:
    return Response(urlencode({k: v or "" for k, v in values.items()}), 200,
                    mimetype="application/x-www-form-urlencoded")
