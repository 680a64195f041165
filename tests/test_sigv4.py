"""The request signer gives what botocore's S3 SigV4 signer gives, for the requests ``lean`` makes.

botocore is the definition here (the oracle): each generated request is signed by both, at the
second botocore stamped it with, and every header botocore added must be the same.
"""

from __future__ import annotations

import calendar
import time
from urllib.parse import quote, urlencode, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from s3mount.store.base import KeySet
from s3mount.store.sigv4 import Signer, host_of

ORIGINS = ["http://127.0.0.1:9000", "https://s3.example.com", "http://s3.example.com:80",
           "https://bucket.s3.example.com:443", "https://S3.Example.COM:8443",
           "http://[::1]:9000", "http://user@host.example:81"]
SIGNED_BY_BOTO = ("X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token", "Authorization")

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=40)
header_names = st.sampled_from(["Content-Type", "Range", "x-amz-meta-mode", "x-amz-meta-x",
                                "Content-MD5", "x-amz-copy-source", "User-Agent", "Expect",
                                "x-amz-metadata-directive", "If-Match"])
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


def boto_signed(method: str, url: str, headers: dict[str, str], body: bytes, keys: KeySet,
                region: str) -> dict[str, str]:
    req = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    req.context["client_config"] = Config(
        s3={"payload_signing_enabled": not url.startswith("https")})
    S3SigV4Auth(ReadOnlyCredentials(keys.access_key, keys.secret_key, keys.session_token),
                "s3", region).add_auth(req)
    return dict(req.headers.items())


@settings(max_examples=300, deadline=None)
@given(origin=st.sampled_from(ORIGINS), method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE",
                                                                "POST"]),
       key=st.none() | names, query=st.dictionaries(names, st.text(max_size=20), max_size=4),
       headers=st.dictionaries(header_names, header_values, max_size=5),
       body=st.binary(max_size=64), token=st.none() | st.text(min_size=1, max_size=50),
       secret=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                      max_size=40),
       region=st.sampled_from(["us-east-1", "eu-west-3", "default"]))
def test_signatures_match_botocore(origin: str, method: str, key: str | None,
                                   query: dict[str, str], headers: dict[str, str], body: bytes,
                                   token: str | None, secret: str, region: str) -> None:
    keys = KeySet("AKIDEXAMPLE", secret, token)
    # The path and query as lean.LeanS3.send builds them.
    path = "/bucket" + ("/" + quote(key, safe="/~") if key is not None else "")
    qs = urlencode(sorted(query.items()), quote_via=quote, safe="-_.~")
    expected = boto_signed(method, origin + path + ("?" + qs if qs else ""), headers, body,
                           keys, region)
    stamp = expected["X-Amz-Date"]
    now = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    parts = urlsplit(origin)
    signer = Signer(host_of(parts.scheme, parts.netloc), region,
                    sign_payload=parts.scheme != "https")
    got = signer.sign(method, path, qs, headers, body, keys, now)
    assert {h: got.get(h) for h in SIGNED_BY_BOTO} == {h: expected.get(h) for h in SIGNED_BY_BOTO}
    assert {h: v for h, v in got.items() if h not in SIGNED_BY_BOTO} == headers


def test_the_signing_key_follows_the_secret_and_the_day() -> None:
    """A renewed secret, or the next day, signs with a new key (it is cached per both)."""
    signer = Signer("h", "us-east-1", sign_payload=True)
    day1 = calendar.timegm((2026, 12, 4, 23, 59, 59))
    a = signer.sign("GET", "/b/k", "", {}, b"", KeySet("AK", "s1", None), day1)
    b = signer.sign("GET", "/b/k", "", {}, b"", KeySet("AK", "s2", None), day1)
    c = signer.sign("GET", "/b/k", "", {}, b"", KeySet("AK", "s2", None), day1 + 1)
    assert len({a["Authorization"], b["Authorization"], c["Authorization"]}) == 3
    assert "20261205/us-east-1" in c["Authorization"]
    again = Signer("h", "us-east-1", sign_payload=True).sign(
        "GET", "/b/k", "", {}, b"", KeySet("AK", "s2", None), day1 + 1)
    assert again == c
