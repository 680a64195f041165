"""What every HTTP-speaking provider needs: one request helper and one timestamp parser.

``call`` turns transport failures into ``ProviderError(retryable=True)`` with a message naming the
host and nothing else (a ``requests`` exception's text may contain a URL with a code in it), and
5xx answers likewise; 4xx answers are returned for the provider to interpret, because each vendor
means something different by them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from .base import ProviderError

log = logging.getLogger(__name__)

TIMEOUT = 30.0
"""Seconds for any one provider request (connect + read)."""


def call(session: requests.Session | Any, method: str, url: str, *, what: str,
         **kwargs: Any) -> requests.Response:
    """``session.request(...)``; unreachable or 5xx -> retryable ``ProviderError``."""
    kwargs.setdefault("timeout", TIMEOUT)
    host = urlsplit(url).netloc or url
    try:
        r = session.request(method, url, **kwargs)
    except requests.Timeout:
        raise ProviderError(f"{what} at {host} did not answer within {kwargs['timeout']:.0f}s",
                            retryable=True) from None
    except requests.RequestException as exc:
        raise ProviderError(f"cannot reach {what} at {host} ({type(exc).__name__})",
                            retryable=True) from None
    if r.status_code >= 500:
        raise ProviderError(f"{what} at {host} is unavailable (HTTP {r.status_code})",
                            retryable=True)
    return r


def json_body(r: requests.Response, what: str) -> Any:
    try:
        return r.json()
    except ValueError:
        raise ProviderError(f"{what} answered HTTP {r.status_code} with a body that is not JSON",
                            retryable=r.status_code >= 500) from None


def parse_time(text: str) -> float:
    """ISO 8601 (``Z`` or an offset, any fractional seconds; no zone means UTC) -> epoch seconds."""
    try:
        when = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        raise ProviderError(f"cannot parse the expiry time {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def error_text(r: requests.Response, *fields: str) -> str:
    """The first of ``fields`` found in a JSON error body (at most 200 characters), else the
    HTTP status; never the whole body, which may echo what was sent."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for f in fields:
            if body.get(f):
                return str(body[f])[:200]
    return f"HTTP {r.status_code}"
