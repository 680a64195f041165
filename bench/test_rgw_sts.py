"""On a real radosgw, STS keys that expired during a mount are renewed by the store (slow: ~16 min).

radosgw answers expired STS keys with ``403 AccessDenied`` (AWS: ``400 ExpiredToken``), so the store
can only tell "expired" from "forbidden" by the keys' stated expiry. The store renews ahead of the
stated expiry on its own; the gateway sees expired keys only when that statement is late, e.g. the
local clock runs behind the gateway's. That is the case built here: the provider reports an expiry
``CLOCK_LAG`` seconds later than the gateway enforces, and the keys are used in that gap.

Run with ``pytest bench/test_rgw_sts.py -m slow`` (needs root for the Ceph packages).
"""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError
from radosgw import Radosgw
from rgw_sts_expiry import StsMinter

from s3mount.credentials.refresher import Refresher
from s3mount.store.base import KeySet
from s3mount.store.s3 import S3Store, StoreConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CLOCK_LAG = 60.0
"""How much later than the gateway the provider believes the keys expire (inside the store's
renew-on-AccessDenied window of 300 s)."""


class StsProvider:
    """A provider minting 15-minute STS keys on the gateway, each reported with a late expiry."""

    name = "rgw-sts"

    def __init__(self, minter: StsMinter) -> None:
        self.minter = minter
        self.true_expiry: list[float] = []

    def fetch(self) -> KeySet:
        t = self.minter.mint()
        self.true_expiry.append(t.expires_at)
        return KeySet(t.access_key, t.secret_key, t.session_token,
                      expires_at=t.expires_at + CLOCK_LAG, endpoint_url=self.minter.endpoint,
                      region="us-east-1")


class SpyRefresher(Refresher):
    """The real refresher (its thread not started, so nothing renews ahead of expiry), recording
    every renewal the store asks for."""

    def __init__(self, provider: StsProvider) -> None:
        super().__init__(provider)
        self.rejected: list[KeySet] = []

    def renew_after_rejection(self, rejected: KeySet) -> KeySet | None:
        self.rejected.append(rejected)
        return super().renew_after_rejection(rejected)


@pytest.fixture(scope="module")
def gateway():
    with Radosgw(block_gib=4) as gw:
        yield gw


def test_expired_sts_keys_get_access_denied_and_the_store_renews(gateway: Radosgw) -> None:
    minter = StsMinter(gateway.url, "sts-renewal")
    provider = StsProvider(minter)
    keys = SpyRefresher(provider)
    store = S3Store(StoreConfig(bucket="sts-renewal", endpoint_url=gateway.url,
                                region="us-east-1", timeout=30), keys)
    first = keys.current()
    store.put("before", b"written with the first keys", metadata={})
    assert keys.rejected == []

    # Past the gateway's expiry, still before the one the provider stated.
    while time.time() < provider.true_expiry[0] + 15:
        time.sleep(min(provider.true_expiry[0] + 15 - time.time(), 30))
    assert not first.expired()

    with pytest.raises(ClientError) as refused:
        minter.s3(first).list_objects_v2(Bucket="sts-renewal", MaxKeys=1)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    store.put("after", b"written with renewed keys", metadata={})

    assert keys.rejected == [first]
    renewed = keys.current()
    assert renewed.access_key != first.access_key
    assert len(provider.true_expiry) == 2
    assert store.get_range("after", 0, 100) == b"written with renewed keys"
    assert store.get_range("before", 0, 100) == b"written with the first keys"
    assert keys.rejected == [first]  # the fresh keys were not refused

