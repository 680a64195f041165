"""A strict local Seagate Lyve Cloud: the Account API v2 and the Lyve Cloud 2 STS.

Built from PROVIDERS.md 4.11, on two ports:

* ``api`` (base ``.../v2``): ``POST/GET /auth/token``, ``POST/GET /permissions``,
  ``GET/PUT/DELETE /permissions/{id}``, ``POST/GET /service-accounts``,
  ``GET/PUT/DELETE /service-accounts/{id}``, ``PUT/DELETE /service-accounts/{id}/enabled``,
  ``GET /usage/current``, ``GET /usage/monthly``; every path also with a trailing slash. Errors are
  ``{"code", "message"}`` with the documented statuses: an expired token is ``400 ExpiredToken``
  (not 401), an unknown or missing one ``400 InvalidToken``, bad account credentials
  ``403 AuthenticationFailed`` (with the trailing space real servers send, switchable).
  A service account's key is minted by ``sandbox.issue_keys`` for the buckets and actions its
  permissions grant; ``DELETE .../enabled`` revokes it in the sandbox, ``PUT`` restores it.
* ``sts``: ``POST /`` ``Action=AssumeRole`` (Lyve Cloud 2): the SigV4 signature is checked with
  botocore's signer against the account's long-lived IAM key, ``Version`` must be 2011-06-15 and
  ``DurationSeconds`` within 900-43200; answers the AWS XML with temporary keys
  (``issue_keys(..., lifetime=DurationSeconds)``).

Limits: a service account's key gets the *union* of its permissions' buckets and actions (the
sandbox binds one policy per key), and ``PUT /service-accounts/{id}`` changes the record, not the
key's scope (the vendor does not regenerate keys either).

Accounts: ``acme`` and ``globex``, each with its own buckets. Every assumed behaviour is a field of
``LyveSettings``. Admin hooks (POST ``/_admin/<hook>`` on the api URL, header ``X-Emulator-Admin``):
``configure`` (any settings field), ``down``/``up``, ``fault`` (see ``emubase``), ``add_account``
``{"account_id"}``, ``stats``.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from flask import Response, jsonify, request

from ..store.base import KeySet
from .emubase import EmulatorBase
from .s3server import S3Sandbox

# Assumptions of PROVIDERS.md 4 (A), in one place:
DEFAULT_TOKEN_LIFETIME = 86400.0
STS_VERSION = "2011-06-15"
STS_DURATION = (900, 43200, 900)  # min, max, default
SIGV4_SKEW = 900.0  # RequestTimeTooSkewed beyond 15 min
ACTIONS = {"all-operations": "*", "read-only": ["GetObject", "ListBucket"],
           "write-only": ["PutObject", "DeleteObject"]}
PERMISSION_TYPES = ("all-buckets", "bucket-prefix", "bucket-names", "policy")
_NAME = re.compile(r"^[A-Za-z0-9 _-]{1,128}$")


@dataclass
class LyveSettings:
    token_lifetime: float = DEFAULT_TOKEN_LIFETIME
    expiration_sec_as_int: bool = False
    """Real servers send expirationSec as a string (D[S19,S20]); the docs show a number."""
    auth_failed_trailing_space: bool = True
    """Send the code "AuthenticationFailed " with the trailing space seen on real servers."""
    ready_delay: float = 0.0
    """Seconds (sandbox clock) a new or updated permission / service account is not ready."""
    sa_expiration_days: int | None = None
    """The admin's "Service Account Expiration" setting: None (off) or days."""
    trailing_slash_required: bool = False
    """Answer 404 to paths without the trailing slash (the racktop client's observation)."""


@dataclass
class Account:
    account_id: str
    access_key: str
    secret: str = field(repr=False)
    buckets: list[str]
    lc2: KeySet | None = None  # the long-lived LC2 IAM user key


@dataclass
class _Permission:
    id: str
    name: str
    description: str
    type: str
    actions: str | None
    prefix: str | None
    buckets: list[str] | None
    policy: Any
    ready_at: float
    created: float


@dataclass
class _ServiceAccount:
    id: str
    name: str
    description: str
    permissions: list[str]
    keys: KeySet
    ready_at: float
    enabled: bool = True
    expiration_date: str | None = None
    expires_at: float | None = None


class LyveError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class LyveCloudEmulator(EmulatorBase):
    """Account API v2 + LC2 STS; see the module docstring."""

    def __init__(self, sandbox: S3Sandbox, *, credential_lifetime: float = 3600.0) -> None:
        super().__init__(sandbox, credential_lifetime=credential_lifetime)
        self.settings = LyveSettings()
        self.accounts: dict[str, Account] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (account, expires_at)
        self._perms: dict[str, dict[str, _Permission]] = {}
        self._sas: dict[str, dict[str, _ServiceAccount]] = {}
        self.stats: Counter[str] = Counter()
        self.api = ""
        self.sts = ""
        for name, fn in (("configure", self._hook_configure),
                         ("add_account", lambda b: self._account_info(
                             self.add_account(str(b["account_id"])))),
                         ("stats", lambda b: dict(self.stats))):
            self.add_hook(name, fn)

    # -- lifecycle and fixtures ----------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        self.api = self.serve(self._api_app()) + "/v2"
        self.sts = self.serve(self._sts_app())
        for name in ("acme", "globex"):
            self.add_account(name)
        return {"api": self.api, "sts": self.sts, "s3": self.sandbox.url,
                "admin_token": self.admin_token, "admin_url": self.api.removesuffix("/v2"),
                "accounts": {a: self._account_info(acc) for a, acc in self.accounts.items()}}

    def add_account(self, account_id: str) -> Account:
        if account_id not in self.accounts:
            buckets = [f"lyve-{account_id}-{n}-{secrets.token_hex(3)}" for n in ("data", "logs")]
            for b in buckets:
                self.sandbox.create_bucket(b)
            acc = Account(account_id, f"acc{secrets.token_hex(8)}", secrets.token_urlsafe(24),
                          buckets)
            acc.lc2 = self.sandbox.issue_keys(buckets, lifetime=None, label="lc2-user")
            self.accounts[account_id] = acc
            self._perms[account_id] = {}
            self._sas[account_id] = {}
        return self.accounts[account_id]

    @staticmethod
    def _account_info(acc: Account) -> dict[str, Any]:
        assert acc.lc2 is not None
        return {"account_id": acc.account_id, "access_key": acc.access_key, "secret": acc.secret,
                "buckets": acc.buckets, "lc2_access_key": acc.lc2.access_key,
                "lc2_secret_key": acc.lc2.secret_key}

    def _hook_configure(self, body: dict) -> dict:
        names = {f.name for f in dataclasses.fields(LyveSettings)}
        if set(body) - names:
            raise ValueError(f"unknown settings {sorted(set(body) - names)}")
        self.settings = dataclasses.replace(self.settings, **body)
        return dataclasses.asdict(self.settings)

    # -- Account API ---------------------------------------------------------------------------

    def unavailable(self) -> Response:
        return _err(503, "ServiceNotReady", "The service is not ready, try again later.")

    def _api_app(self) -> Any:
        app = self.new_app("lyvecloud-api")

        @app.errorhandler(LyveError)
        def _lyve_error(exc: LyveError) -> Any:
            self.stats[f"error_{exc.code.strip()}"] += 1
            return _err(exc.status, exc.code, str(exc))

        @app.before_request
        def _slash() -> Any:
            if self.settings.trailing_slash_required and request.path.startswith("/v2/") \
                    and not request.path.endswith("/"):
                return _err(404, "NotFound", "Not found.")
            return None

        rules = [
            ("/auth/token", self._auth_token, ["POST", "GET"]),
            ("/permissions", self._permissions, ["POST", "GET"]),
            ("/permissions/<pid>", self._permission, ["GET", "PUT", "DELETE"]),
            ("/service-accounts", self._service_accounts, ["POST", "GET"]),
            ("/service-accounts/<sid>", self._service_account, ["GET", "PUT", "DELETE"]),
            ("/service-accounts/<sid>/enabled", self._enabled, ["PUT", "DELETE"]),
            ("/usage/current", self._usage, ["GET"]),
            ("/usage/monthly", self._usage, ["GET"]),
        ]
        for path, view, methods in rules:
            for p in (f"/v2{path}", f"/v2{path}/"):
                app.add_url_rule(p, endpoint=f"{view.__name__}:{p}", view_func=view,
                                 methods=methods)
        return app

    def _bearer(self) -> tuple[Account, float]:
        """The account of the request's session token, and the token's expiry."""
        auth = request.headers.get("Authorization", "")
        held = self._tokens.get(auth[7:].strip()) if auth.startswith("Bearer ") else None
        if held is None:
            raise LyveError(400, "InvalidToken", "Token is not valid.")
        if self.now() >= held[1]:
            raise LyveError(400, "ExpiredToken", "Token expired.")
        return self.accounts[held[0]], held[1]

    def _account(self) -> Account:
        return self._bearer()[0]

    def _expiration_sec(self, seconds: float) -> int | str:
        s = max(int(seconds), 0)
        return s if self.settings.expiration_sec_as_int else str(s)

    def _auth_token(self) -> Any:
        if request.method == "GET":
            return jsonify({"expirationSec": self._expiration_sec(self._bearer()[1] - self.now())})
        self.stats["auth_token"] += 1
        body = _json_body()
        fields = [body.get(k) for k in ("accountId", "accessKey", "secret")]
        if not all(isinstance(f, str) and f for f in fields):
            raise LyveError(400, "InvalidArgument", "One or more of the specified arguments "
                                                    "was not valid.")
        acc = self.accounts.get(fields[0])
        if acc is None or not secrets.compare_digest(fields[1], acc.access_key) or \
                not secrets.compare_digest(fields[2], acc.secret):
            code = "AuthenticationFailed " if self.settings.auth_failed_trailing_space \
                else "AuthenticationFailed"
            raise LyveError(403, code, "Authentication failed.")
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (acc.account_id, self.now() + self.settings.token_lifetime)
        return jsonify({"token": token,
                        "expirationSec": self._expiration_sec(self.settings.token_lifetime)})

    # permissions

    def _permissions(self) -> Any:
        acc = self._account()
        perms = self._perms[acc.account_id]
        if request.method == "GET":
            name = request.args.get("name")
            return jsonify([{"name": p.name, "id": p.id, "description": p.description,
                             "type": p.type, "readyState": self.now() >= p.ready_at,
                             "createTime": _iso(p.created)}
                            for p in perms.values() if name is None or p.name == name])
        p = self._permission_from(acc, _json_body(), None)
        perms[p.id] = p
        return jsonify({"id": p.id})

    def _permission_from(self, acc: Account, body: dict, pid: str | None) -> _Permission:
        name, desc, ptype = body.get("name"), body.get("description"), body.get("type")
        if not isinstance(name, str) or not _NAME.match(name) or not isinstance(desc, str) \
                or not desc or len(desc) > 1000 or ptype not in PERMISSION_TYPES:
            raise LyveError(400, "InvalidArgument", "One or more of the specified arguments "
                                                    "was not valid.")
        if any(p.name == name and p.id != pid for p in self._perms[acc.account_id].values()):
            raise LyveError(409, "PermissionNameAlreadyExists",
                            "The permission name is already in use.")
        actions, prefix, buckets, policy = body.get("actions"), body.get("prefix"), \
            body.get("buckets"), body.get("policy")
        if ptype == "policy":
            if not isinstance(policy, dict | str) or not policy:
                raise LyveError(400, "InvalidArgument", "policy is required.")
        else:
            if actions not in ACTIONS:
                raise LyveError(400, "InvalidArgument", "actions is not valid.")
            if ptype == "bucket-prefix" and not (isinstance(prefix, str) and prefix):
                raise LyveError(400, "InvalidArgument", "prefix is required.")
            if ptype == "bucket-names":
                if not isinstance(buckets, list) or not buckets:
                    raise LyveError(400, "InvalidArgument", "buckets is required.")
                missing = [b for b in buckets if b not in acc.buckets]
                if missing:
                    raise LyveError(404, "BucketNotFound", f"Bucket {missing[0]} not found.")
        now = self.now()
        return _Permission(pid or uuid.uuid4().hex[:12], name, desc, ptype, actions, prefix,
                           buckets, policy, now + self.settings.ready_delay, now)

    def _get_permission(self, acc: Account, pid: str) -> _Permission:
        p = self._perms[acc.account_id].get(pid)
        if p is None:
            raise LyveError(404, "PermissionNotFound", "Permission not found.")
        return p

    def _permission(self, pid: str) -> Any:
        acc = self._account()
        p = self._get_permission(acc, pid)
        if request.method == "GET":
            out: dict[str, Any] = {"id": p.id, "name": p.name, "description": p.description,
                                   "type": p.type, "readyState": self.now() >= p.ready_at}
            if p.type == "policy":
                out["policy"] = p.policy
            else:
                out.update(actions=p.actions, prefix=p.prefix, buckets=p.buckets)
            return jsonify(out)
        if self.now() < p.ready_at:
            raise LyveError(409, "PermissionNotReady",
                            "The permission is still being processed by some regions.")
        if request.method == "PUT":
            self._perms[acc.account_id][pid] = self._permission_from(acc, _json_body(), pid)
            return _text("Successfully updated the permission.")
        del self._perms[acc.account_id][pid]
        return _text("Permission deleted successfully.")

    # service accounts

    def _scope(self, acc: Account, perm_ids: list[str]) -> tuple[list[str], list[str] | str]:
        """Union of the buckets and actions ``perm_ids`` grant (see the module's limits)."""
        buckets: set[str] = set()
        actions: set[str] = set()
        everything = False
        for pid in perm_ids:
            p = self._get_permission(acc, pid)
            if p.type == "all-buckets":
                buckets.update(acc.buckets)
            elif p.type == "bucket-prefix":
                buckets.update(b for b in acc.buckets if b.startswith(p.prefix or ""))
            elif p.type == "bucket-names":
                buckets.update(p.buckets or [])
            else:
                text = str(p.policy)
                buckets.update(b for b in acc.buckets if f"arn:aws:s3:::{b}" in text)
                everything = True
            granted = ACTIONS.get(p.actions or "", "*")
            if granted == "*":
                everything = True
            else:
                actions.update(granted)
        if not buckets:
            raise LyveError(400, "InvalidPermissions", "The permissions grant no bucket.")
        return sorted(buckets), "*" if everything else sorted(actions)

    def _service_accounts(self) -> Any:
        acc = self._account()
        sas = self._sas[acc.account_id]
        if request.method == "GET":
            name = request.args.get("name")
            return jsonify([{"name": s.name, "id": s.id, "enabled": s.enabled,
                             "readyState": self.now() >= s.ready_at,
                             "description": s.description}
                            for s in sas.values() if name is None or s.name == name])
        body = _json_body()
        name, perms = body.get("name"), body.get("permissions")
        if not isinstance(name, str) or not _NAME.match(name) or not isinstance(perms, list) \
                or not perms:
            raise LyveError(400, "InvalidArgument", "One or more of the specified arguments "
                                                    "was not valid.")
        if any(s.name == name for s in sas.values()):
            raise LyveError(409, "ServiceAccountNameAlreadyExists",
                            "The service account name is already in use. Please use a "
                            "different name.")
        buckets, actions = self._scope(acc, perms)
        keys = self.sandbox.issue_keys(buckets, actions=actions, lifetime=None, label="lyve-sa")
        now = self.now()
        sa = _ServiceAccount(uuid.uuid4().hex[:12], name, str(body.get("description") or ""),
                             list(perms), keys, now + self.settings.ready_delay)
        if self.settings.sa_expiration_days is not None:
            day = datetime.fromtimestamp(now, UTC).date() + timedelta(
                days=self.settings.sa_expiration_days)
            sa.expiration_date = day.isoformat()
            sa.expires_at = datetime(day.year, day.month, day.day, 23, 59, 59,
                                     tzinfo=UTC).timestamp()
            self._register(sa)
        sas[sa.id] = sa
        self.stats["sa_created"] += 1
        out = {"id": sa.id, "accessKey": keys.access_key, "secret": keys.secret_key}
        if sa.expiration_date:
            out["expirationDate"] = sa.expiration_date
        return jsonify(out)

    def _register(self, sa: _ServiceAccount) -> None:
        """(Re)register the key with the gate: sets its expiry and lifts a revocation."""
        assert self.sandbox.gate is not None
        self.sandbox.gate.register(sa.keys.access_key, sa.expires_at)

    def _get_sa(self, acc: Account, sid: str) -> _ServiceAccount:
        sa = self._sas[acc.account_id].get(sid)
        if sa is None:
            raise LyveError(404, "ServiceAccountNotFound", "Service account not found.")
        return sa

    def _service_account(self, sid: str) -> Any:
        acc = self._account()
        sa = self._get_sa(acc, sid)
        if request.method == "GET":
            out = {"id": sa.id, "name": sa.name, "description": sa.description,
                   "enabled": sa.enabled, "readyState": self.now() >= sa.ready_at,
                   "permissions": sa.permissions}
            if sa.expiration_date:
                out["expirationDate"] = sa.expiration_date
            return jsonify(out)
        self._ready(sa)
        if request.method == "PUT":
            body = _json_body()
            name, perms = body.get("name"), body.get("permissions")
            if not isinstance(name, str) or not _NAME.match(name) or \
                    not isinstance(perms, list) or not perms:
                raise LyveError(400, "InvalidArgument", "One or more of the specified arguments "
                                                        "was not valid.")
            if any(s.name == name and s.id != sid for s in self._sas[acc.account_id].values()):
                raise LyveError(409, "ServiceAccountNameAlreadyExists",
                                "The service account name is already in use.")
            self._scope(acc, perms)  # validates the permission ids
            sa.name, sa.permissions = name, list(perms)
            sa.description = str(body.get("description") or sa.description)
            sa.ready_at = self.now() + self.settings.ready_delay
            return _text("Successfully updated the service account.")
        del self._sas[acc.account_id][sid]
        self.sandbox.revoke(sa.keys.access_key)
        self.stats["sa_deleted"] += 1
        return _text("Service account deleted successfully.")

    def _ready(self, sa: _ServiceAccount) -> None:
        if self.now() < sa.ready_at:
            raise LyveError(409, "ServiceAccountNotReady",
                            "The service account is still being processed by some regions.")

    def _enabled(self, sid: str) -> Any:
        acc = self._account()
        sa = self._get_sa(acc, sid)
        if sa.expires_at is not None and self.now() >= sa.expires_at:
            raise LyveError(404, "ServiceAccountExpired", "The service account has expired.")
        self._ready(sa)
        sa.enabled = request.method == "PUT"
        if sa.enabled:
            self._register(sa)
        else:
            self.sandbox.revoke(sa.keys.access_key)
        return _text("Service account enabled." if sa.enabled else "Service account disabled.")

    def _usage(self) -> Any:
        acc = self._account()
        return jsonify({"totalUsageGB": 0, "buckets": [{"name": b, "usageGB": 0}
                                                       for b in acc.buckets]})

    # -- Lyve Cloud 2 STS ----------------------------------------------------------------------

    def _sts_app(self) -> Any:
        app = self.new_app("lyvecloud-sts")
        app.add_url_rule("/", view_func=self._assume_role, methods=["POST"])
        return app

    def _assume_role(self) -> Any:
        self.stats["assume_role"] += 1
        acc = self._sigv4_account()
        if isinstance(acc, Response):
            return acc
        form = request.form
        if form.get("Action") != "AssumeRole":
            return _sts_error(400, "InvalidAction", "Only AssumeRole is supported.")
        if form.get("Version") != STS_VERSION:
            return _sts_error(400, "InvalidAction",
                              f"Could not find operation AssumeRole for version "
                              f"{form.get('Version')}")
        for required in ("RoleArn", "RoleSessionName"):
            if not form.get(required):
                return _sts_error(400, "MissingParameter", f"{required} is required.")
        lo, hi, default = STS_DURATION
        try:
            duration = int(form.get("DurationSeconds", default))
        except ValueError:
            duration = -1
        if not lo <= duration <= hi:
            return _sts_error(400, "ValidationError", f"DurationSeconds must be between {lo} "
                                                      f"and {hi}.")
        keys = self.sandbox.issue_keys(acc.buckets, lifetime=duration, label="lc2")
        self.stats["assumed"] += 1
        expiration = datetime.fromtimestamp(keys.expires_at or 0, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        xml = (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleResult><Credentials>"
            f"<SessionToken>{escape(keys.session_token or '')}</SessionToken>"
            f"<SecretAccessKey>{escape(keys.secret_key)}</SecretAccessKey>"
            f"<Expiration>{expiration}</Expiration>"
            f"<AccessKeyId>{escape(keys.access_key)}</AccessKeyId></Credentials>"
            f"<AssumedRoleUser><Arn>arn:aws:sts::{acc.account_id}:assumed-role/s3mount/"
            f"{escape(form['RoleSessionName'])}</Arn><AssumeRoleId>{uuid.uuid4().hex}"
            "</AssumeRoleId></AssumedRoleUser><PackedPolicySize>0</PackedPolicySize>"
            f"</AssumeRoleResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
            "</ResponseMetadata></AssumeRoleResponse>")
        return Response(xml, 200, mimetype="text/xml")

    def _sigv4_account(self) -> Account | Response:
        """The account whose long-lived key signed this request (SigV4, checked by botocore)."""
        m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,"
                     r"\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]+)$",
                     request.headers.get("Authorization", ""))
        if m is None:
            return _sts_error(403, "MissingAuthenticationToken", "Request is not signed.")
        ak, _date, region, service, signed, sig = m.groups()
        acc = next((a for a in self.accounts.values() if a.lc2 and a.lc2.access_key == ak), None)
        if acc is None or acc.lc2 is None:
            return _sts_error(403, "InvalidClientTokenId", "The security token included in the "
                                                           "request is invalid.")
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return _sts_error(403, "IncompleteSignature", "X-Amz-Date is missing or invalid.")
        if abs(when.timestamp() - time.time()) > SIGV4_SKEW:
            return _sts_error(403, "RequestTimeTooSkewed", "Signature expired.")
        names = signed.split(";")
        headers = {n: request.headers.get(n, "") for n in names}
        aws = AWSRequest(method=request.method, url=request.url, data=request.get_data(),
                         headers=headers)
        aws.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(ak, acc.lc2.secret_key), service, region)
        expected = signer.signature(
            signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
        if not secrets.compare_digest(expected, sig):
            self.stats["sts_bad_signature"] += 1
            return _sts_error(403, "SignatureDoesNotMatch", "The request signature we calculated "
                                                            "does not match the signature you "
                                                            "provided.")
        return acc


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise LyveError(400, "InvalidArgument", "The request body must be a JSON object.")
    return body


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _err(status: int, code: str, message: str) -> Any:
    resp = jsonify({"code": code, "message": message})
    resp.status_code = status
    return resp


def _text(message: str) -> Response:
    return Response(message, 200, mimetype="text/plain")


def _sts_error(status: int, code: str, message: str) -> Response:
    kind = "Sender" if status < 500 else "Receiver"
    return Response(
        f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
        f"<Type>{kind}</Type><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>", status, mimetype="text/xml")
