"""What every provider emulator shares: serving Flask apps on loopback, "down" mode, admin hooks.

An emulator is one or more Flask apps (one per vendor "host": identity vs storage API, account API vs
STS), each served by werkzeug on ``127.0.0.1`` with a port from bind(0) in a daemon thread. Every app
gets the same two switches:

* **down**: every route but the admin ones answers ``503`` (a provider outage, for the refresher's
  backoff tests);
* **faults** (PROVIDERS.md 1): ``fault`` ``{"path", "status", "body"?, "delay"?, "count"?}`` makes
  the next ``count`` (default 1) requests to ``path`` wait ``delay`` seconds and then, if ``status``
  is not 0, answer ``status`` with ``body`` instead of the real route (``status: 0`` = only slow);
* **admin hooks** under ``/_admin/<hook>`` (POST, JSON body), guarded by the ``X-Emulator-Admin``
  header carrying the emulator's admin token (given in ``start()``'s dict). Tests in another process
  (``SandboxProcess``) flip behaviour through them; in-process tests may call the methods directly.

Request lines are not logged: they carry codes, tokens and signatures in query strings.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from flask import Flask, Response, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from .s3server import S3Sandbox

log = logging.getLogger(__name__)

ADMIN_HEADER = "X-Emulator-Admin"
ADMIN_PREFIX = "/_admin/"


class _QuietHandler(WSGIRequestHandler):
    """No access log: request lines hold OAuth codes, verifiers and signatures."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class EmulatorBase:
    """Serving, down mode and admin-hook dispatch for one emulator (subclasses add the routes)."""

    def __init__(self, sandbox: S3Sandbox, *, credential_lifetime: float = 3600.0) -> None:
        self.sandbox = sandbox
        self.credential_lifetime = credential_lifetime
        self.admin_token = secrets.token_urlsafe(24)
        self.down = False
        self.lock = threading.RLock()
        self._servers: list[Any] = []
        self._faults: dict[str, list[dict[str, Any]]] = {}
        self._hooks: dict[str, Callable[[dict], Any]] = {"down": self._hook_down,
                                                        "up": self._hook_up,
                                                        "fault": self._hook_fault}

    # -- building apps -------------------------------------------------------------------------

    def new_app(self, name: str) -> Flask:
        """A Flask app with the down switch and the admin hooks already wired."""
        app = Flask(name)

        @app.before_request
        def _gate() -> Any:
            if request.path.startswith(ADMIN_PREFIX):
                return self._admin(request.path.removeprefix(ADMIN_PREFIX))
            if self.down:
                return self.unavailable()
            return self._injected_fault(request.path)

        return app

    def unavailable(self) -> Response:
        """The answer of every route while the provider is down (subclasses shape the body)."""
        return Response("service unavailable\n", 503, mimetype="text/plain")

    def add_hook(self, name: str, fn: Callable[[dict], Any]) -> None:
        self._hooks[name] = fn

    def _admin(self, hook: str) -> Any:
        if not secrets.compare_digest(request.headers.get(ADMIN_HEADER, ""), self.admin_token):
            return Response("admin token required\n", 403, mimetype="text/plain")
        fn = self._hooks.get(hook)
        if fn is None or request.method != "POST":
            return Response(f"unknown admin hook {hook!r}\n", 404, mimetype="text/plain")
        try:
            with self.lock:
                result = fn(request.get_json(silent=True) or {})
        except (KeyError, ValueError, TypeError) as exc:
            return Response(f"bad admin call: {exc!r}\n", 400, mimetype="text/plain")
        return jsonify(result if result is not None else {"ok": True})

    def add_fault(self, path: str, status: int, body: str = "", delay: float = 0.0,
                  count: int = 1) -> None:
        """Queue ``count`` faulty answers for ``path`` (see the module docstring)."""
        with self.lock:
            self._faults.setdefault(path, []).extend(
                [{"status": int(status), "body": body, "delay": float(delay)}] * int(count))

    def pending_faults(self, path: str) -> int:
        """Faults still queued for ``path``: a test counts the requests that took one."""
        with self.lock:
            return len(self._faults.get(path, []))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _injected_fault(self, path: str) -> Response | None:
        with self.lock:
            queue = self._faults.get(path)
            fault = queue.pop(0) if queue else None
        if fault is None:
            return None
        if fault["delay"]:
            time.sleep(fault["delay"])
        if not fault["status"]:
            return None
        return Response(fault["body"], fault["status"],
                        mimetype="application/json" if fault["body"].startswith(("{", "["))
                        else "text/plain")

    def _hook_fault(self, body: dict) -> None:
        self.add_fault(str(body["path"]), int(body["status"]), str(body.get("body", "")),
                       float(body.get("delay", 0)), int(body.get("count", 1)))

    def _hook_down(self, body: dict) -> None:
        self.down = True

    def _hook_up(self, body: dict) -> None:
        self.down = False

    # -- serving -------------------------------------------------------------------------------

    def serve(self, app: Flask) -> str:
        """Serve ``app`` on a free loopback port in a daemon thread; return its base URL."""
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True,
                         name=f"emulator-{app.name}").start()
        self._servers.append(server)
        url = f"http://127.0.0.1:{server.server_port}"
        log.info("%s emulator on %s", app.name, url)
        return url

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def now(self) -> float:
        """The sandbox clock: all expiry in the emulators follows it, so tests can jump ahead."""
        return self.sandbox.clock.now()


def admin_call(base_url: str, admin_token: str, hook: str, body: dict | None = None,
               timeout: float = 10) -> Any:
    """Call an admin hook over HTTP (for tests driving an emulator in another process)."""
    r = requests.post(f"{base_url}{ADMIN_PREFIX}{hook}", json=body or {}, timeout=timeout,
                      headers={ADMIN_HEADER: admin_token})
    r.raise_for_status()
    return r.json()
