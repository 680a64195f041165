"""The local S3 server: moto's server with authentication on, behind a gate that adds expiry.

moto checks SigV4 signatures, access keys, session tokens and IAM policies once its authentication is
switched on, but it never expires anything. ``KeyGate`` (a small WSGI layer in front of moto's app)
keeps a registry of the keys the sandbox issued, answers ``400 ExpiredToken`` for a key past its
expiry and ``403 InvalidAccessKeyId`` for one revoked early, and serves the sandbox's admin API under
``/_sandbox/`` (guarded by an admin token) so tests in another process can mint and revoke keys.

Users get their own bucket: each key set is bound by an IAM policy to the buckets and actions it was
issued for, so one user's keys cannot touch another user's bucket.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from ..store.base import KeySet
from .clock import SandboxClock

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"
ALL_ACTIONS = "*"
# What a Cleverbase session policy allows (PROVIDERS.md 2.4).
CLEVERBASE_ACTIONS = ("GetObject", "PutObject", "DeleteObject", "ListBucket")

_CRED_RE = re.compile(r"Credential=([A-Za-z0-9]+)/")


@dataclass
class KeyRecord:
    """What the gate knows of one issued key (the secret stays with moto)."""

    expires_at: float | None
    revoked: bool = False


def _error_xml(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>sandbox</RequestId></Error>"
    ).encode()


class KeyGate:
    """WSGI middleware: expiry and revocation in front of moto, plus the admin API."""

    def __init__(self, app: Any, sandbox: S3Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox
        self.records: dict[str, KeyRecord] = {}
        self._lock = threading.Lock()
        self._completing = threading.Lock()

    def register(self, access_key: str, expires_at: float | None) -> None:
        with self._lock:
            self.records[access_key] = KeyRecord(expires_at)

    def revoke(self, access_key: str) -> None:
        with self._lock:
            rec = self.records.setdefault(access_key, KeyRecord(None))
            rec.revoked = True

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_sandbox/"):
            return self.sandbox.admin_app(environ, start_response)
        akid = self._access_key_of(environ)
        rec = self.records.get(akid) if akid else None
        if rec is not None:
            head = environ.get("REQUEST_METHOD") == "HEAD"
            if rec.revoked:
                return self._refuse(start_response, "403 Forbidden", "InvalidAccessKeyId",
                                    "The AWS Access Key Id you provided does not exist in our "
                                    "records.", head)
            if rec.expires_at is not None and self.sandbox.clock.now() >= rec.expires_at:
                return self._refuse(start_response, "400 Bad Request", "ExpiredToken",
                                    "The provided token has expired.", head)
        if environ.get("REQUEST_METHOD") == "POST" and "uploadId=" in environ.get(
                "QUERY_STRING", ""):
            # moto completes multipart uploads racily: a retry that comes while the first
            # completion still assembles the object breaks both (500). AWS answers such a retry
            # with the same success, as moto does once the first is done: one at a time.
            with self._completing:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)

    @staticmethod
    def _access_key_of(environ: dict) -> str | None:
        m = _CRED_RE.search(environ.get("HTTP_AUTHORIZATION", ""))
        if m:
            return m.group(1)
        q = environ.get("QUERY_STRING", "")
        m = re.search(r"X-Amz-Credential=([A-Za-z0-9]+)%2F", q)
        return m.group(1) if m else None

    @staticmethod
    def _refuse(start_response: Any, status: str, code: str, message: str,
                head: bool) -> list[bytes]:
        body = b"" if head else _error_xml(code, message)  # HEAD errors carry no body, as on AWS
        start_response(status, [("Content-Type", "application/xml"),
                                ("Content-Length", str(len(body)))])
        return [body]


class S3Sandbox:
    """A moto S3/IAM/STS server on a free loopback port, with authentication on.

    ``issue_keys`` is the one way keys come into being: long-lived IAM user keys, or temporary STS
    keys with a lifetime the gate enforces. Emulators in the same process call it directly; other
    processes use the admin API (``SandboxClient``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 clock: SandboxClock | None = None) -> None:
        self.host = host
        self.clock = clock or SandboxClock()
        self.admin_token = secrets.token_urlsafe(24)
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.gate: KeyGate | None = None
        self.admin: KeySet | None = None
        self._iam: Any = None
        self._sts: Any = None
        self._s3: Any = None
        self._lock = threading.Lock()
        self._counter = 0
        self._scopes: dict[str, list[str] | str] = {}

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://{self.host}:{self._server.server_port}"

    def start(self) -> S3Sandbox:
        from moto import settings
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )

        class Dispatcher(DomainDispatcherApplication):
            """moto's dispatcher, remembering which service answers for a host. moto works it
            out again for every request, twice, under one lock: a listing of its own package
            directory (about 200 ``stat`` calls) and a match against every service's URL
            patterns. That was about 40% of the sandbox's time per request, and every test
            that mounts waits on this server."""

            def __init__(self) -> None:
                super().__init__(create_backend_app)
                self._backend_of: dict[str | None, Any] = {}

            def get_backend_for_host(self, host: str | None) -> Any:
                # Called under the dispatcher's lock; hosts are few (the one endpoint, and
                # the service names moto infers from the signature).
                if host not in self._backend_of:
                    self._backend_of[host] = super().get_backend_for_host(host)
                return self._backend_of[host]

        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        app = Dispatcher()
        self.gate = KeyGate(app, self)
        self._server = make_server(self.host, self._port, self.gate, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="s3-sandbox")
        self._thread.start()
        self._bootstrap_admin()
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is authenticated
        log.info("sandbox S3 server on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _client(self, service: str, keys: KeySet | None = None) -> Any:
        k = keys or self.admin
        return boto3.client(
            service, endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=k.access_key if k else "bootstrap",
            aws_secret_access_key=k.secret_key if k else "bootstrap",
            aws_session_token=k.session_token if k else None,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def _bootstrap_admin(self) -> None:
        iam = self._client("iam")
        iam.create_user(UserName="sandbox-admin")
        iam.put_user_policy(UserName="sandbox-admin", PolicyName="admin", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        k = iam.create_access_key(UserName="sandbox-admin")["AccessKey"]
        self.admin = KeySet(k["AccessKeyId"], k["SecretAccessKey"], endpoint_url=self.url,
                            region="us-east-1")
        self._iam = self._client("iam")
        self._sts = self._client("sts")
        self._s3 = self._client("s3")

    # -- what tests and emulators use ----------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        """Create ``name`` if it does not exist yet (idempotent, like provider provisioning)."""
        try:
            self._s3.create_bucket(Bucket=name)
        except self._s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        except self._s3.exceptions.BucketAlreadyExists:
            pass

    def admin_s3(self) -> Any:
        """A boto3 S3 client with full rights (for tests to look behind the mount's back)."""
        return self._client("s3")

    def issue_keys(
        self, buckets: list[str] | str, *, actions: Iterable[str] | str = ALL_ACTIONS,
        lifetime: float | None = None, label: str = "user",
    ) -> KeySet:
        """Mint keys allowed ``actions`` (S3 action names without ``s3:``) on ``buckets`` only.

        With ``lifetime`` the keys are temporary (STS, with a session token) and stop working after
        that many seconds of the sandbox clock; without, they are IAM user keys that last until
        revoked.
        """
        with self._lock:
            self._counter += 1
            name = f"{label}-{self._counter}"
        policy = json.dumps(_policy(buckets, actions))
        if lifetime is None:
            self._iam.create_user(UserName=name)
            self._iam.put_user_policy(UserName=name, PolicyName="scope", PolicyDocument=policy)
            k = self._iam.create_access_key(UserName=name)["AccessKey"]
            keys = KeySet(k["AccessKeyId"], k["SecretAccessKey"], endpoint_url=self.url,
                          region="us-east-1")
            expires_at = None
        else:
            trust = json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/sandbox-admin"},
                "Action": "sts:AssumeRole"}]})
            self._iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
            self._iam.put_role_policy(RoleName=name, PolicyName="scope", PolicyDocument=policy)
            c = self._sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{name}",
                                      RoleSessionName=name, DurationSeconds=43200)["Credentials"]
            expires_at = self.clock.now() + lifetime
            keys = KeySet(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"],
                          expires_at=expires_at, endpoint_url=self.url, region="us-east-1")
        assert self.gate is not None
        self.gate.register(keys.access_key, expires_at)
        with self._lock:
            self._scopes[keys.access_key] = buckets
        return keys

    def revoke(self, access_key: str) -> None:
        """Make ``access_key`` stop working now (not by expiry)."""
        assert self.gate is not None
        self.gate.revoke(access_key)

    def revoke_bucket(self, bucket: str) -> int:
        """Revoke every key issued for ``bucket`` (a provider revoking a user's keys early)."""
        with self._lock:
            victims = [ak for ak, b in self._scopes.items() if b != "*" and bucket in b]
        for ak in victims:
            self.revoke(ak)
        return len(victims)

    # -- admin API for other processes ---------------------------------------------------------

    def admin_app(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        req = Request(environ)
        if not secrets.compare_digest(req.headers.get("X-Sandbox-Admin", ""), self.admin_token):
            return Response("admin token required\n", 403)(environ, start_response)
        body = req.get_json(silent=True) or {}
        action = req.path.removeprefix("/_sandbox/")
        try:
            if action == "buckets" and req.method == "POST":
                self.create_bucket(body["name"])
                result: Any = {"ok": True}
            elif action == "keys" and req.method == "POST":
                k = self.issue_keys(body["buckets"], actions=body.get("actions", ALL_ACTIONS),
                                    lifetime=body.get("lifetime"), label=body.get("label", "user"))
                result = _keys_json(k)
            elif action == "revoke" and req.method == "POST":
                if "bucket" in body:
                    result = {"revoked": self.revoke_bucket(body["bucket"])}
                else:
                    self.revoke(body["access_key"])
                    result = {"ok": True}
            elif action == "clock" and req.method == "POST":
                self.clock.advance(float(body.get("advance", 0)))
                result = {"now": self.clock.now()}
            else:
                return Response("unknown admin call\n", 404)(environ, start_response)
        except (KeyError, ValueError, TypeError) as exc:
            return Response(f"bad request: {exc}\n", 400)(environ, start_response)
        return Response(json.dumps(result), 200, mimetype="application/json")(
            environ, start_response)


def _policy(buckets: list[str] | str, actions: Iterable[str] | str) -> dict:
    if buckets == "*":
        resources: list[str] = ["arn:aws:s3:::*"]
    else:
        resources = []
        for b in buckets:
            resources += [f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*"]
    acts: list[str] | str = "s3:*" if actions == "*" else [f"s3:{a}" for a in actions]
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": acts, "Resource": resources}]}


def _keys_json(k: KeySet) -> dict:
    return {"access_key": k.access_key, "secret_key": k.secret_key,
            "session_token": k.session_token, "expires_at": k.expires_at,
            "endpoint_url": k.endpoint_url, "region": k.region}


def keys_from_json(d: dict) -> KeySet:
    """The inverse of the admin API's key JSON."""
    return KeySet(d["access_key"], d["secret_key"], d.get("session_token"),
                  expires_at=d.get("expires_at"), endpoint_url=d.get("endpoint_url"),
                  region=d.get("region"))
