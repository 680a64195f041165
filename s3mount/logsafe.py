"""Keep secrets out of logs, whoever logs them.

Our own code never logs a secret; this is the second line of defence for what libraries log
(PROVIDERS.md 6): ``RedactingFilter`` rewrites every record on the handlers it sits on, replacing the
*values* of Authorization headers, OAuth1 parameters (``oauth_signature``, ``oauth_token_secret``,
``oauth_verifier``, ``oauth_token``), authorization codes and tokens in URLs and form bodies, SigV4
query parameters (``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``) and JSON or
dict fields whose name says secret, password, token, signature or credential (plus Cellar's
``{"name": "...SECRET", "value": ...}`` env entries) with ``[REDACTED]``.

``install()`` puts the filter on the root logger's handlers and pins the chatty HTTP/OAuth libraries
(botocore prints request headers including the security token at DEBUG; oauthlib prints signature
base strings) at WARNING, even when the user asks for debug output.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[REDACTED]"

QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "requests", "oauthlib", "authlib",
                 "joserfc")
"""Loggers that never go below WARNING: their DEBUG output contains headers, bodies and keys."""

_SENSITIVE = r"[\w.-]*(?:secret|password|passwd|token|signature|credential|verifier|apikey)[\w.-]*"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization / Proxy-Authorization headers in any rendering (HTTP, dict repr, JSON).
    (re.compile(r"((?:proxy-)?authorization(['\"]?)\s*[:=,]\s*(['\"]))(?:(?!\3).)*\3", re.I),
     rf"\1{REDACTED}\3"),
    (re.compile(r"((?:proxy-)?authorization['\"]?\s*[:=]\s*)(?![\s'\"]|\[REDACTED)[^\r\n]+", re.I),
     rf"\1{REDACTED}"),
    # X-Amz-Security-Token and friends as headers.
    (re.compile(r"(x-amz-(?:security-token|signature|credential)['\"]?\s*:\s*['\"]?)[^'\"\s,]+",
                re.I), rf"\1{REDACTED}"),
    # key="value" (OAuth1 header parameters).
    (re.compile(rf"\b((?:{_SENSITIVE}|oauth_token|code)\s*=\s*\")[^\"]*\"", re.I),
     rf'\1{REDACTED}"'),
    # key=value in URLs, query strings and form bodies.
    (re.compile(rf"\b((?:{_SENSITIVE}|oauth_token|code|code_verifier|id_token)=)[^&\s'\"]+", re.I),
     rf"\1{REDACTED}"),
    # JSON / dict fields: "secretAccessKey": "...", 'client_secret': '...'.
    (re.compile(rf"(([\"']){_SENSITIVE}\2\s*:\s*([\"']))(?:(?!\3).)*\3", re.I),
     rf"\1{REDACTED}\3"),
    # (name, value) pairs, as in a repr of headers: ('X-Amz-Security-Token', '...').
    (re.compile(rf"(\(\s*([\"']){_SENSITIVE}\2\s*,\s*([\"']))(?:(?!\3).)*\3", re.I),
     rf"\1{REDACTED}\3"),
    # Cellar env entries: {"name": "CELLAR_ADDON_KEY_SECRET", "value": "..."}.
    (re.compile(r"(([\"'])name\2\s*:\s*\2[^\"']*(?:SECRET|KEY_ID|TOKEN|PASSWORD)[^\"']*\2\s*,\s*"
                r"\2value\2\s*:\s*\2)[^\"']*", re.I), rf"\1{REDACTED}"),
]


def redact(text: str) -> str:
    """``text`` with every secret value replaced by ``[REDACTED]``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) with ``redact``; drops nothing."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format string: logging reports it itself
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> RedactingFilter:
    """Redact on every handler of ``logger`` (default: root) and quieten the chatty libraries.

    Call it after the handlers are set up (``logging.basicConfig``); idempotent.
    """
    logger = logger or logging.getLogger()
    flt = next((f for h in logger.handlers for f in h.filters if isinstance(f, RedactingFilter)),
               None) or RedactingFilter()
    for handler in logger.handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)
    for name in QUIET_LOGGERS:
        quiet = logging.getLogger(name)
        if quiet.level < logging.WARNING:  # NOTSET (0) included: it would inherit DEBUG
            quiet.setLevel(logging.WARNING)
    return flt
