"""Mounts that reach the sandbox through a proxy (the fault proxy, or a TLS front)."""

from __future__ import annotations

from mountlib import Mount, Mounter

from s3mount.sandbox.client import SandboxProcess
from s3mount.sandbox.faultproxy import Fault, FaultProxy
from s3mount.store.base import KeySet

NO_PUTS = Fault("internal", probability=1.0, methods=("PUT",))
"""Every upload fails (lookups and listings still work): async uploads stay pending, so a crash
finds them pending however fast the machine would have stored them."""


class ThroughProxy:
    """The sandbox as the mounts see it: keys from the sandbox, the S3 endpoint at ``url``."""

    def __init__(self, sandbox: SandboxProcess, url: str) -> None:
        self._sandbox = sandbox
        self.url = url

    def issue_keys(self, buckets: list[str] | str, **kw: object) -> KeySet:
        return self._sandbox.issue_keys(buckets, **kw)  # type: ignore[arg-type]


def through(mounter: Mounter, sandbox: SandboxProcess, url: str) -> Mounter:
    """Make ``mounter`` (the fixture, with its teardown) mount with ``--endpoint-url url``."""
    mounter.sandbox = ThroughProxy(sandbox, url)  # type: ignore[assignment]
    return mounter


def crash(m: Mount, proxy: FaultProxy) -> None:
    """kill -9 ``m``, then clear ``proxy``'s faults once the dead mount's connections are closed:
    a request it sent just before the kill still gets the faults it was sent under (cleared at
    once, a refused upload could be forwarded and stored after the crash)."""
    m.kill9()
    assert proxy.wait_idle(30), "the killed mount's connections to the proxy stayed open"
    proxy.clear()
