"""The fault proxy itself, driven with boto3 against the sandbox S3 server (no mount)."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from s3mount.sandbox.faultproxy import (
    ADMIN_PREFIX,
    TOKEN_HEADER,
    Fault,
    FaultProxy,
    FaultProxyClient,
    FaultProxyProcess,
)
from s3mount.store.base import KeySet

MiB = 1024 * 1024


@pytest.fixture
def proxy(sandbox) -> Iterator[FaultProxy]:
    with FaultProxy(sandbox.url, seed=1) as p:
        yield p


@pytest.fixture
def keys(sandbox, bucket) -> KeySet:
    """Temporary keys, so the session token header goes through the proxy and is signed too."""
    return sandbox.issue_keys([bucket], lifetime=3600)


def client(url: str, keys: KeySet, *, attempts: int = 1, read_timeout: float = 30,
           verify: bool | str = True) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", verify=verify,
        aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key,
        aws_session_token=keys.session_token,
        config=Config(s3={"addressing_style": "path"}, connect_timeout=5,
                      read_timeout=read_timeout,
                      retries={"mode": "standard", "total_max_attempts": attempts},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


def test_traffic_passes_unchanged(proxy: FaultProxy, keys: KeySet, bucket: str, s3) -> None:
    c = client(proxy.url, keys)
    body = os.urandom(300_000)
    c.put_object(Bucket=bucket, Key="dir/a.bin", Body=body, Metadata={"mode": "33188"})
    assert s3.get_object(Bucket=bucket, Key="dir/a.bin")["Body"].read() == body
    assert c.get_object(Bucket=bucket, Key="dir/a.bin")["Body"].read() == body
    ranged = c.get_object(Bucket=bucket, Key="dir/a.bin", Range="bytes=10-19")
    assert ranged["Body"].read() == body[10:20]
    head = c.head_object(Bucket=bucket, Key="dir/a.bin")
    assert head["ContentLength"] == len(body) and head["Metadata"] == {"mode": "33188"}
    listed = c.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/a.bin"]
    # Multipart, with parts streamed through concurrently on several connections.
    big = os.urandom(11 * MiB)
    c.upload_fileobj(io.BytesIO(big), bucket, "big.bin", Config=TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3))
    got = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    # Errors from the server come through as they are.
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=bucket, Key="missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    c.delete_object(Bucket=bucket, Key="dir/a.bin")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
    stats = proxy.stats()
    assert stats["requests"] == stats["forwarded"] >= 10
    assert not {"drop", "slowdown", "internal", "delay", "cut", "refused_down"} & set(stats)


def test_chunked_request_body_passes(proxy: FaultProxy, sandbox, s3) -> None:
    # The sandbox admin API reads JSON bodies; a generator body goes out chunked.
    r = requests.post(f"{proxy.url}/_sandbox/buckets", data=iter([b'{"name": ', b'"chunky"}']),
                      headers={"X-Sandbox-Admin": sandbox.state["admin_token"],
                               "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    s3.head_bucket(Bucket="chunky")


@pytest.mark.parametrize("kind,status,code", [("slowdown", 503, "SlowDown"),
                                              ("internal", 500, "InternalError")])
def test_error_replies(proxy: FaultProxy, keys: KeySet, bucket: str, s3, kind: str, status: int,
                       code: str) -> None:
    c = client(proxy.url, keys)
    proxy.set_faults([Fault(kind, count=1, methods=("PUT",))])
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert e.value.response["Error"]["Code"] == code
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    # Not forwarded: the object is not there. The fault is used up: the next PUT works.
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    c.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
    assert proxy.stats()[kind] == 1
    # An SDK with retries rides over them.
    proxy.set_faults([Fault(kind, count=2)])
    assert client(proxy.url, keys, attempts=3).get_object(
        Bucket=bucket, Key="k")["Body"].read() == b"data"
    assert proxy.stats()[kind] == 3


def test_a_fault_given_again_counts_again(proxy: FaultProxy, keys: KeySet, bucket: str) -> None:
    """A fault kept in a constant and given to the proxy by several tests hits ``count`` requests
    each time: the proxy counts on its own copy (it used up the caller's object, so a second
    test's ``hold`` held nothing and that test failed, depending on which worker ran it)."""
    c = client(proxy.url, keys)
    once = Fault("internal", count=1, methods=("GET",))
    for n in (1, 2):
        proxy.set_faults([once])
        with pytest.raises(ClientError):
            c.list_objects_v2(Bucket=bucket)
        c.list_objects_v2(Bucket=bucket)
        assert proxy.stats()["internal"] == n
    assert once.count == 1


def test_drop(proxy: FaultProxy, keys: KeySet, bucket: str) -> None:
    c = client(proxy.url, keys)
    proxy.set_faults([Fault("drop", count=1)])
    with pytest.raises(ConnectionClosedError):
        c.list_objects_v2(Bucket=bucket)
    c.list_objects_v2(Bucket=bucket)
    assert proxy.stats()["drop"] == 1


def test_delay(proxy: FaultProxy, keys: KeySet, bucket: str) -> None:
    proxy.set_faults([Fault("delay", count=1, delay=3)])
    with pytest.raises(ReadTimeoutError):
        client(proxy.url, keys, read_timeout=0.5).list_objects_v2(Bucket=bucket)
    client(proxy.url, keys, read_timeout=0.5).list_objects_v2(Bucket=bucket)  # used up
    assert proxy.stats()["delay"] == 1


def test_hold_until_released(proxy: FaultProxy, keys: KeySet, bucket: str, s3) -> None:
    """A held PUT reaches the server, and its answer waits for ``release()``, not a clock."""
    proxy.set_faults([Fault("hold", count=1, methods=("PUT",))])
    c = client(proxy.url, keys)
    done = threading.Event()
    put = threading.Thread(target=lambda: (c.put_object(Bucket=bucket, Key="k", Body=b"v"),
                                           done.set()), daemon=True)
    put.start()
    try:
        deadline = time.monotonic() + 30
        while not s3.list_objects_v2(Bucket=bucket).get("Contents"):
            assert time.monotonic() < deadline, "the held PUT never reached the server"
            time.sleep(0.05)
        assert proxy.stats()["hold"] == 1
        assert not done.wait(1), "the answer was not held"
    finally:
        proxy.release()
    assert done.wait(30)
    c.put_object(Bucket=bucket, Key="k2", Body=b"v")  # count used up: not held
    assert proxy.stats()["hold"] == 1


def test_wait_idle_waits_for_what_a_gone_client_sent(proxy: FaultProxy, keys: KeySet,
                                                     bucket: str) -> None:
    """A request sent just before its client died is still served (and faulted) afterwards;
    ``wait_idle`` returns once no connection is left, so clearing the faults then cannot let
    it through."""
    proxy.set_faults([Fault("hold", count=1, methods=("GET",)),
                      Fault("internal", probability=1.0, methods=("PUT",))])
    c = client(proxy.url, keys)
    listing = threading.Thread(target=lambda: c.list_objects_v2(Bucket=bucket), daemon=True)
    listing.start()
    deadline = time.monotonic() + 30
    while not proxy.stats().get("hold"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not proxy.wait_idle(0.5)  # the held exchange keeps its connection open
    proxy.release()
    listing.join(30)
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:  # sends, and is gone
        raw.sendall(b"PUT /" + bucket.encode() + b"/k HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 1\r\n\r\nv")
    assert proxy.wait_idle(30)
    assert proxy.stats()["internal"] == 1  # refused under the faults it was sent under


def test_cut_body(proxy: FaultProxy, keys: KeySet, bucket: str, s3) -> None:
    body = os.urandom(200_000)
    s3.put_object(Bucket=bucket, Key="k", Body=body)
    c = client(proxy.url, keys)
    proxy.set_faults([Fault("cut", count=1, methods=("GET",))])
    r = c.get_object(Bucket=bucket, Key="k")
    assert r["ContentLength"] == len(body)  # the head promised all of it
    with pytest.raises((IncompleteReadError, ResponseStreamingError)):
        r["Body"].read()
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == body
    assert proxy.stats()["cut"] == 1


def test_down_and_up(proxy: FaultProxy, keys: KeySet, bucket: str) -> None:
    c = client(proxy.url, keys)
    c.list_objects_v2(Bucket=bucket)
    proxy.set_down(True)
    for _ in range(3):
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
            c.list_objects_v2(Bucket=bucket)
    assert proxy.stats()["refused_down"] >= 3
    proxy.set_down(False)
    c.list_objects_v2(Bucket=bucket)


def _outcomes(proxy: FaultProxy, c: Any, bucket: str, seed: int) -> list[bool]:
    proxy.set_faults([Fault("slowdown", probability=0.5)], seed=seed)
    out = []
    for _ in range(40):
        try:
            c.list_objects_v2(Bucket=bucket)
            out.append(True)
        except ClientError:
            out.append(False)
    return out


def test_probability_is_seeded(proxy: FaultProxy, keys: KeySet, bucket: str) -> None:
    c = client(proxy.url, keys)
    first = _outcomes(proxy, c, bucket, seed=7)
    assert 5 < first.count(False) < 35
    assert _outcomes(proxy, c, bucket, seed=7) == first
    assert _outcomes(proxy, c, bucket, seed=8) != first


def test_spare_last_attempt(proxy: FaultProxy, keys: KeySet, bucket: str) -> None:
    """Every request fails but the SDK's last try: each call succeeds on exactly that try."""
    proxy.set_faults([Fault("slowdown", probability=1.0, spare_last_attempt=True)])
    c = client(proxy.url, keys, attempts=3)
    for _ in range(2):
        r = c.list_objects_v2(Bucket=bucket)
        assert r["ResponseMetadata"]["RetryAttempts"] == 2
    assert proxy.stats()["slowdown"] == 4


def test_admin_api_needs_the_token(proxy: FaultProxy) -> None:
    url = f"{proxy.url}{ADMIN_PREFIX}down"
    for headers in ({}, {TOKEN_HEADER: "wrong"}):
        r = requests.put(url, json={"down": True}, headers=headers, timeout=10)
        assert r.status_code == 403
    assert proxy.state()["down"] is False
    r = requests.put(f"{proxy.url}{ADMIN_PREFIX}faults", json={"faults": [{"kind": "nope"}]},
                     headers={TOKEN_HEADER: proxy.token}, timeout=10)
    assert r.status_code == 400 and "unknown fault kind" in r.text


def test_separate_process(sandbox, keys: KeySet, bucket: str) -> None:
    with FaultProxyProcess(sandbox.url, seed=3) as p:
        c = client(p.url, keys)
        c.put_object(Bucket=bucket, Key="k", Body=b"v")
        p.set_faults([Fault("internal", count=1)])
        with pytest.raises(ClientError):
            c.get_object(Bucket=bucket, Key="k")
        p.set_down(True)
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
            c.get_object(Bucket=bucket, Key="k")
        p.clear()
        assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
        stats = p.stats()
        assert stats["internal"] == 1 and stats["refused_down"] == 1
        # Another client of the same process sees the same state.
        assert FaultProxyClient(p.url, p.token).state()["down"] is False


class _KeepAliveUpstream(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (the sandbox closes after every answer): a chunked GET, a HEAD
    that announces a length it does not send, a PUT echoing its body. Notes each client port."""

    protocol_version = "HTTP/1.1"
    peers: list[int] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.peers.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")

    def do_HEAD(self) -> None:
        self.peers.append(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()

    def do_PUT(self) -> None:
        self.peers.append(self.client_address[1])
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_keep_alive_and_framing() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{server.server_port}") as p:
            conn = http.client.HTTPConnection("127.0.0.1", int(p.url.rsplit(":", 1)[1]),
                                              timeout=10)
            for _ in range(2):
                conn.request("GET", "/x")
                assert conn.getresponse().read() == b"hello world"
                conn.request("HEAD", "/x")
                r = conn.getresponse()
                assert r.getheader("Content-Length") == "1000" and r.read() == b""
                conn.request("PUT", "/x", body=b"payload" * 1000)
                r = conn.getresponse()
                assert r.status == 201 and r.read() == b"payload" * 1000
            conn.close()
            # Six requests on one client connection went upstream on one connection.
            assert len(_KeepAliveUpstream.peers) == 6 and len(set(_KeepAliveUpstream.peers)) == 1
            assert p.stats()["forwarded"] == 6
    finally:
        server.shutdown()
        server.server_close()
