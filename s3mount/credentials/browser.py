"""Sending the user through a provider's consent page and catching the redirect back.

Both OAuth logins (Cleverbase's OIDC code flow, Clever Cloud's OAuth1 dance) end with the provider
redirecting the browser to a URL we chose. Two ways to get it:

* **desktop** (default): a one-shot HTTP listener on ``127.0.0.1`` (a port from bind(0), or the
  profile's ``redirect_port``) is the redirect target ``http://127.0.0.1:PORT/callback``; we open the
  consent URL in the user's browser (``webbrowser``) and wait for the redirect to reach the listener.
* **headless** (``s3mount login --headless``, e.g. over ssh): we print the consent URL; the user
  opens it anywhere, and after consenting pastes the URL the browser was sent to (its page will fail
  to load: nothing listens there) back on stdin.

Tests and CI have no browser and no user, but the emulators approve automatically. Setting
``S3MOUNT_TEST_BROWSER=http`` (or passing ``open_browser=http_browser``) replaces the browser with a
plain ``requests.get`` of the consent URL that follows the provider's redirect to the loopback
listener, so the whole login runs unattended through the real listener and the real redirect.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import sys
import threading
import webbrowser
from collections.abc import Callable
from urllib.parse import urlsplit

import requests

from .base import ProviderError

log = logging.getLogger(__name__)

BROWSER_ENV = "S3MOUNT_TEST_BROWSER"
CALLBACK_PATH = "/callback"
CONSENT_TIMEOUT = 300.0
"""Seconds the user has to finish the consent page (Cleverbase's QR challenge lives 10 min)."""

Opener = Callable[[str], None]


class LoopbackListener:
    """A one-shot HTTP server on 127.0.0.1 that records the first ``/callback`` request."""

    def __init__(self, port: int = 0) -> None:
        done = threading.Event()
        got: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if urlsplit(self.path).path != CALLBACK_PATH or done.is_set():
                    self.send_error(404)
                    return
                got.append(self.path)
                body = b"s3mount: login finished, you can close this window.\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                done.set()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # the request line holds the code / verifier

        try:
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise ProviderError(f"cannot listen on 127.0.0.1:{port} for the login redirect: "
                                f"{exc.strerror}") from None
        self._done = done
        self._got = got
        self.redirect_uri = f"http://127.0.0.1:{self._server.server_port}{CALLBACK_PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="s3mount-login-redirect")
        self._thread.start()

    def wait(self, timeout: float) -> str:
        """The full redirect URL the browser arrived with."""
        if not self._done.wait(timeout):
            raise ProviderError(f"no answer from the browser within {timeout:.0f}s; run the login "
                                "again (or use --headless)")
        return f"http://127.0.0.1:{self._server.server_port}{self._got[0]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_browser(url: str) -> None:
    """The test "browser": GET the consent page and follow redirects (to the loopback listener)."""
    try:
        r = requests.get(url, timeout=30, allow_redirects=True)
    except requests.RequestException as exc:
        raise ProviderError(f"cannot reach the consent page: {type(exc).__name__}",
                            retryable=True) from None
    if not r.history or r.status_code != 200:
        raise ProviderError(f"the consent page answered HTTP {r.status_code} instead of "
                            "redirecting back")


def system_browser(url: str) -> None:
    """Open ``url`` in the user's browser; print it as well in case none opens."""
    print(f"Opening your browser to log in. If it does not open, visit:\n  {url}",
          file=sys.stderr)
    webbrowser.open(url)


def default_opener() -> Opener:
    return http_browser if os.environ.get(BROWSER_ENV) == "http" else system_browser


def run_consent(build_url: Callable[[str], str], *, headless: bool = False,
                open_browser: Opener | None = None, read_line: Callable[[], str] | None = None,
                port: int = 0, timeout: float = CONSENT_TIMEOUT) -> str:
    """Send the user to ``build_url(redirect_uri)`` and return the URL they are redirected to."""
    if headless:
        redirect_uri = f"http://127.0.0.1:{port or _free_port()}{CALLBACK_PATH}"
        url = build_url(redirect_uri)
        print("Open this URL in a browser and log in:\n  " + url + "\nThen paste the address "
              "the browser was sent to (it starts with " + redirect_uri + "):", file=sys.stderr)
        answer = (read_line or _read_stdin)().strip()
        if not answer.startswith(redirect_uri.split(CALLBACK_PATH)[0]):
            raise ProviderError("that is not the redirect address; run the login again")
        return answer
    with LoopbackListener(port) as listener:
        (open_browser or default_opener())(build_url(listener.redirect_uri))
        return listener.wait(timeout)


def _read_stdin() -> str:
    line = sys.stdin.readline()
    if not line:
        raise ProviderError("no redirect address given on stdin")
    return line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
