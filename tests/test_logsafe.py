"""The log redaction filter: each kind of secret PROVIDERS.md 6 names, and install()'s wiring."""

from __future__ import annotations

import io
import logging

import pytest

from s3mount import logsafe
from s3mount.logsafe import REDACTED, RedactingFilter, redact

SECRET = "S3CR3Tvalue+/="


@pytest.mark.parametrize("text, kept", [
    (f"Authorization: Bearer {SECRET}", "Authorization"),
    (f"{{'Authorization': 'OAuth oauth_consumer_key=\"ck\", oauth_signature=\"{SECRET}\"'}}",
     "Authorization"),
    (f"GET /callback?code={SECRET}&state=abc HTTP/1.1", "state=abc"),
    (f"oauth_token={SECRET}&oauth_token_secret={SECRET}&expiration_date=2027", "expiration_date"),
    (f"oauth_verifier={SECRET}&user=user_1", "user=user_1"),
    (f'oauth_signature="{SECRET}", oauth_nonce="n"', 'oauth_nonce="n"'),
    (f"https://h/b/k?X-Amz-Algorithm=AWS4&X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}"
     f"&X-Amz-Security-Token={SECRET}", "X-Amz-Algorithm=AWS4"),
    (f"X-Amz-Security-Token: {SECRET}", "X-Amz-Security-Token"),
    (f'{{"accessKeyId": "AK", "secretAccessKey": "{SECRET}", "sessionToken": "{SECRET}"}}',
     '"accessKeyId": "AK"'),
    (f'{{"token": "{SECRET}", "expirationSec": "86400"}}', '"expirationSec": "86400"'),
    (f'{{"accountId": "acme", "accessKey": "AK", "secret": "{SECRET}"}}', '"accountId": "acme"'),
    (f"{{'password': '{SECRET}', 'user': 'me'}}", "'user': 'me'"),
    (f'[{{"name": "CELLAR_ADDON_KEY_SECRET", "value": "{SECRET}"}}, '
     '{"name": "CELLAR_ADDON_HOST", "value": "cellar.example"}]', "cellar.example"),
    (f"data=[('Host', 'h'), ('X-Amz-Security-Token', '{SECRET}')]", "('Host', 'h')"),
    (f"grant_type=refresh_token&refresh_token={SECRET}&client_secret={SECRET}",
     "grant_type=refresh_token"),
    (f"id_token={SECRET}&code_verifier={SECRET}", "id_token="),
])
def test_redact(text, kept):
    out = redact(text)
    assert SECRET not in out and REDACTED in out
    assert kept in out


def test_plain_text_is_untouched():
    line = "credentials renewed (new key …ABCD, expire in 3599s) for bucket cb-0123456789abcdef"
    assert redact(line) == line


def logger_with_filter() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("test_logsafe.private")
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, stream


def test_filter_redacts_arguments_and_tracebacks():
    log, stream = logger_with_filter()
    log.debug("sending %s", {"Authorization": f"Bearer {SECRET}"})
    try:
        raise ValueError(f"bad body secret={SECRET}")
    except ValueError:
        log.exception("request failed")
    out = stream.getvalue()
    assert SECRET not in out
    assert "request failed" in out and "ValueError" in out


def test_install_is_idempotent_and_quietens_libraries(monkeypatch):
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.DEBUG)
    for name in logsafe.QUIET_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    logsafe.install()
    logsafe.install()
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    logging.getLogger("botocore.endpoint").debug("Sending http request: headers %s", SECRET)
    logging.getLogger("urllib3.connectionpool").debug("GET /?code=%s", SECRET)
    logging.getLogger("s3mount.test").debug("code=%s", SECRET)
    out = stream.getvalue()
    assert "Sending http request" not in out  # botocore is pinned at WARNING
    assert "code=[REDACTED]" in out and SECRET not in out
    assert all(logging.getLogger(n).level == logging.WARNING for n in logsafe.QUIET_LOGGERS)
