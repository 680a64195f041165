"""HTTPS through a proxy's CONNECT tunnels that break: before the TLS handshake, halfway
through it, or halfway through an answer. A mount absorbs each as a broken connection (tried
again), loses nothing, and keeps no socket of a broken tunnel."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading

from faultlib import ConnectProxy, through
from mountlib import Mounter

from s3mount.store.s3 import StoreConfig


def _sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def test_https_through_tunnels_that_break_loses_nothing(
        mounter: Mounter, sandbox, tls_front, bucket: str, s3,
        self_signed: tuple[str, str]) -> None:
    proxy = ConnectProxy()
    try:
        keys = sandbox.issue_keys([bucket])
        env = dict(mounter.env_for(keys), AWS_CA_BUNDLE=self_signed[0],
                   HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}", NO_PROXY="", no_proxy="")
        m = through(mounter, sandbox, tls_front.url)(bucket, "timeout=20", keys=keys, env=env)
        stored = {f"r{i}": os.urandom(200_000 + i) for i in range(16)}
        for key, data in stored.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        written = {f"w{i}": os.urandom(100_000 * i + 11) for i in range(16)}
        errors: list[tuple[str, BaseException]] = []

        def run(name: str, op: object) -> None:
            try:
                op()  # type: ignore[operator]
            except BaseException as exc:  # noqa: BLE001 - a wrong read (AssertionError) too
                errors.append((name, exc))

        def read(key: str) -> None:
            assert (m.path / key).read_bytes() == stored[key], key

        # Fewer breaks than a request has attempts (6): however the requests meet the broken
        # tunnels, none can fail for them.
        proxy.cuts = 5
        threads = [threading.Thread(target=run, args=(k, lambda k=k: read(k))) for k in stored]
        threads += [threading.Thread(target=run, args=(k, lambda k=k: (m.path / k).write_bytes(
            written[k]))) for k in written]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert proxy.cuts == 0, "fewer new connections than tunnels to break"
        # Every broken tunnel's socket is gone: at most the pool's idle connections remain.
        assert _sockets(m.pid) <= StoreConfig.max_pool_connections + 4
        m.unmount()
        for key, data in written.items():
            got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), key
    finally:
        proxy.close()
