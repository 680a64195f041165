"""The refresher with a fake provider and a fake clock: when it renews, how it backs off, and that
many rejected requests cause exactly one renewal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from s3mount.credentials.base import ProviderError
from s3mount.credentials.refresher import Refresher, RefreshPolicy, backoff_delay, refresh_at
from s3mount.store.base import KeySet

POLICY = RefreshPolicy()


def keys(n: int, expires_at: float | None) -> KeySet:
    return KeySet(f"AKIDFAKE{n:08d}", f"secret-{n}", expires_at=expires_at)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeProvider:
    """Hands out numbered keys living ``lifetime`` fake seconds; can be down or slow."""

    name = "fake"

    def __init__(self, clock: FakeClock, lifetime: float | None = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.down: ProviderError | None = None
        self.gate: threading.Event | None = None  # when set up, fetch waits for it
        self.entered = threading.Event()

    def fetch(self) -> KeySet:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.down is not None:
            raise self.down
        exp = None if self.lifetime is None else self.clock() + self.lifetime
        return keys(self.calls, exp)


def wait_for(cond: Callable[[], bool], nudge: Callable[[], None], timeout: float = 10) -> None:
    """Poll ``cond`` (nudging the refresher thread awake) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the refresher did not act in time"
        nudge()
        time.sleep(0.01)


# -- the pure schedule ----------------------------------------------------------------------------


def test_refresh_at_hour_keys():
    k = keys(1, 3600.0)
    assert refresh_at(k, 0.0, POLICY, 0.0) == 3600 - 900  # botocore's advisory window
    assert refresh_at(k, 0.0, POLICY, 0.999) == pytest.approx(3600 - 900 - 90, abs=0.1)


def test_refresh_at_short_lived_keys_use_a_third_of_the_lifetime():
    assert refresh_at(keys(1, 60.0), 0.0, POLICY, 0.0) == 40.0
    # never sooner than min(min_interval, lifetime/2) after issue
    assert refresh_at(keys(1, 6.0), 0.0, POLICY, 0.999) >= 3.0
    # keys that arrive already expired are renewed as soon as the floor allows, not in a loop
    assert refresh_at(keys(1, -5.0), 0.0, POLICY, 0.0) == 0.0


def test_refresh_at_non_expiring_keys_are_reread():
    assert refresh_at(keys(1, None), 100.0, POLICY, 0.0) == 100 + POLICY.reread_interval
    assert 100 < refresh_at(keys(1, None), 100.0, POLICY, 0.999) < 100 + POLICY.reread_interval


def test_backoff_grows_and_is_capped():
    lows = [backoff_delay(n, POLICY, 0.0) for n in range(1, 12)]
    highs = [backoff_delay(n, POLICY, 0.999) for n in range(1, 12)]
    assert lows[:4] == [0.5, 1.0, 2.0, 4.0]
    assert all(a <= b for a, b in zip(lows, lows[1:], strict=False))
    assert max(highs) <= POLICY.backoff_max and highs[-1] > POLICY.backoff_max * 0.99


# -- the thread -----------------------------------------------------------------------------------


def test_renews_before_expiry():
    clock = FakeClock()
    provider = FakeProvider(clock)
    r = Refresher(provider, clock=clock, rand=lambda: 0.0)
    r.start()
    try:
        first = r.current()
        due = r.status().next_refresh_at
        assert due == first.expires_at - 900
        clock.now = due
        wait_for(lambda: provider.calls == 2, r._wake.set)
        wait_for(lambda: r.current() != first, r._wake.set)
        renewed = r.current()
        assert renewed.expires_at == due + 3600 and not first.expired(clock())
        assert r.status().renewals == 1 and r.status().next_refresh_at == due + 2700
    finally:
        r.stop()


def test_backs_off_while_provider_down_and_keeps_serving():
    clock = FakeClock()
    provider = FakeProvider(clock)
    r = Refresher(provider, clock=clock, rand=lambda: 0.0)
    r.start()
    try:
        first = r.current()
        provider.down = ProviderError("provider unavailable (HTTP 503)", retryable=True)
        clock.now = r.status().next_refresh_at
        delays = []
        for attempt in range(2, 6):
            wait_for(lambda a=attempt: provider.calls == a and r.status().last_error is not None
                     and r.status().next_refresh_at > clock.now, r._wake.set)
            delays.append(r.status().next_refresh_at - clock.now)
            assert r.current() is first  # still serving the valid keys
            clock.now = r.status().next_refresh_at
        assert delays == [0.5, 1.0, 2.0, 4.0]
        provider.down = None
        wait_for(lambda: r.current() is not first, r._wake.set)
        assert r.status().last_error is None
    finally:
        r.stop()


def test_login_required_is_reported_and_slows_retries():
    clock = FakeClock()
    provider = FakeProvider(clock)
    r = Refresher(provider, clock=clock, rand=lambda: 0.0)
    r.start()
    try:
        provider.down = ProviderError("run s3mount login", login_required=True)
        clock.now = r.status().next_refresh_at
        wait_for(lambda: r.status().login_required, r._wake.set)
        assert r.status().next_refresh_at - clock.now >= POLICY.backoff_max
    finally:
        r.stop()


def test_many_rejections_cause_exactly_one_fetch():
    clock = FakeClock()
    provider = FakeProvider(clock)
    r = Refresher(provider, clock=clock, rand=lambda: 0.0)
    rejected = r.current()
    assert provider.calls == 1
    clock.now += 60  # well past the rejection grace of the first keys
    provider.gate = threading.Event()
    provider.entered.clear()
    results: list[KeySet | None] = []
    threads = [threading.Thread(target=lambda: results.append(r.renew_after_rejection(rejected)))
               for _ in range(32)]
    for t in threads:
        t.start()
    assert provider.entered.wait(10)  # one caller is inside fetch; the rest queue on the lock
    provider.gate.set()
    for t in threads:
        t.join(10)
    assert provider.calls == 2
    assert len(results) == 32 and all(k is not None and k == results[0] for k in results)
    assert results[0] != rejected


def test_rejection_right_after_renewal_is_not_renewed_again():
    clock = FakeClock()
    provider = FakeProvider(clock)
    r = Refresher(provider, clock=clock, rand=lambda: 0.0)
    first = r.current()
    clock.now += 1  # keys revoked early: a rejection of the first keys renews them at once
    second = r.renew_after_rejection(first)
    assert second is not None and second != first and provider.calls == 2
    clock.now += 1  # the renewed keys refused too, right away: renewing cannot fix this
    assert r.renew_after_rejection(second) is None
    assert provider.calls == 2
    clock.now += 5  # past the grace: a later rejection may renew again
    assert r.renew_after_rejection(second) is not None
    assert provider.calls == 3
