"""OAuth 1.0a request signing for ``requests``, done by oauthlib (which knows HMAC-SHA512).

``requests_oauthlib`` is not a dependency and authlib's client lacks HMAC-SHA512 (PROVIDERS.md
3.2.4), so this is the thin glue: a ``requests`` auth that hands each request to
``oauthlib.oauth1.Client.sign`` and puts the result back.
"""

from __future__ import annotations

from typing import Any

import requests
from oauthlib.oauth1 import Client

SIGNATURE_METHOD = "HMAC-SHA512"  # recommended by Clever Cloud for production (S8)
FORM = "application/x-www-form-urlencoded"


class OAuth1Auth(requests.auth.AuthBase):
    """Signs with oauthlib; ``signature_type`` is AUTH_HEADER, BODY or QUERY."""

    def __init__(self, consumer_key: str, consumer_secret: str, *, token: str | None = None,
                 token_secret: str | None = None, verifier: str | None = None,
                 callback: str | None = None, signature_type: str = "AUTH_HEADER") -> None:
        self._client = Client(consumer_key, client_secret=consumer_secret,
                              resource_owner_key=token, resource_owner_secret=token_secret,
                              verifier=verifier, callback_uri=callback,
                              signature_method=SIGNATURE_METHOD, signature_type=signature_type)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body: Any = r.body
        if self._client.signature_type == "BODY":
            r.headers["Content-Type"] = FORM
            body = body or ""
        elif r.headers.get("Content-Type") != FORM:
            body = None  # only form bodies are signed (RFC 5849 3.4.1.3.1)
        if isinstance(body, bytes):
            body = body.decode()
        uri, headers, signed_body = self._client.sign(r.url or "", r.method or "GET", body,
                                                      dict(r.headers))
        r.prepare_url(uri, None)
        r.headers.update(headers)
        if body is not None:
            r.prepare_body(signed_body, None)
        return r
