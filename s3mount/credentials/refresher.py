"""The refresher: one daemon thread per mount that keeps the keys fresh.

Protocol (what runs where, who holds which lock):

* ``current()`` is called by store calls in worker threads; it reads one reference (atomic in CPython)
  and never blocks on the network.
* The refresher thread renews ahead of expiry: ``refresh_at()`` decides when (a margin before expiry,
  minus jitter, never closer than ``min_interval`` to the previous renewal). On failure it backs off
  exponentially (capped) and keeps serving the current keys while they are valid.
* ``renew_after_rejection(rejected)`` is the request path's single flight: many store calls that saw
  the same keys rejected (ExpiredToken, InvalidAccessKeyId...) wait on one lock; the first renews, the
  others share its outcome: they find the keys already changed, or the attempt failed, and return at
  once. A failed attempt is remembered for ``failure_memory`` seconds, so callers in that time fail
  at once (EACCES) instead of each asking the provider again: with a provider that takes its full
  HTTP timeout to fail, N waiters would otherwise wait N timeouts.
* Time is the wall clock (``clock()``), not a monotonic clock: expiry is a wall-clock deadline and must
  keep counting through a suspend. Both clock and wait are injectable so tests use a fake clock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..store.base import KeySet
from .base import Provider, ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshPolicy:
    """When to renew. Defaults follow botocore's advisory window (15 min before expiry)."""

    margin: float = 900.0
    """Renew this long before expiry (shrunk to a third of the lifetime for short-lived keys)."""
    jitter: float = 0.1
    """Up to this fraction of the margin is taken off at random, so many mounts do not renew at once."""
    min_interval: float = 5.0
    """Never renew more often than this (a provider handing out keys that are already near expiry)."""
    reread_interval: float = 900.0
    """How often to re-read keys that do not expire (rotated long-lived keys are picked up)."""
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    rejection_grace: float = 2.0
    """Keys obtained because the server rejected the previous ones, and rejected too within this
    many seconds, are not renewed again at once (a denial that renewal cannot fix must not turn
    every request into a provider call)."""
    failure_memory: float = 5.0
    """A failed fetch is remembered this long: callers that need new keys meanwhile get its error
    at once instead of asking the provider again (the background renewal keeps its own backoff)."""


def refresh_at(keys: KeySet, issued_at: float, policy: RefreshPolicy, rand: float) -> float:
    """Wall-clock time at which ``keys`` (obtained at ``issued_at``) should be renewed.

    ``rand`` in [0, 1) draws the jitter; passing it in keeps this function pure and testable.
    """
    if keys.expires_at is None:
        return issued_at + policy.reread_interval * (1 - policy.jitter * rand)
    lifetime = max(keys.expires_at - issued_at, 0.0)
    margin = min(policy.margin, lifetime / 3)
    when = keys.expires_at - margin - margin * policy.jitter * rand
    return max(when, issued_at + min(policy.min_interval, lifetime / 2))


def backoff_delay(failures: int, policy: RefreshPolicy, rand: float) -> float:
    """Exponential backoff with full jitter on the upper half, capped."""
    base = min(policy.backoff_max, policy.backoff_initial * (2 ** max(failures - 1, 0)))
    return base / 2 + base / 2 * rand


@dataclass
class RefreshStatus:
    """What ``s3mount status`` shows about credentials (no secrets)."""

    provider: str
    access_key_id: str | None
    expires_at: float | None
    next_refresh_at: float | None
    renewals: int
    last_error: str | None
    login_required: bool


class Refresher:
    """Owns the current ``KeySet`` of one mount and renews it in a daemon thread."""

    def __init__(
        self,
        provider: Provider,
        *,
        policy: RefreshPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.provider = provider
        self.policy = policy or RefreshPolicy()
        self._clock = clock
        self._rand = rand
        self._keys: KeySet | None = None
        self._issued_at = 0.0
        self._next_at: float | None = None
        self._renewals = 0
        self._failures = 0
        self._last_error: str | None = None
        self._login_required = False
        self._renewed_on_rejection_at: float | None = None
        self._failed_at: float | None = None  # when the last fetch failed (None after a success)
        self._lock = threading.Lock()  # serialises fetches (single flight)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- request path -------------------------------------------------------------------------

    def current(self) -> KeySet:
        """The keys to sign the next request with; fetches the first set if there is none yet."""
        keys = self._keys
        if keys is None:
            with self._lock:
                if self._keys is None:
                    if self._failed_recently():
                        raise ProviderError(self._last_error or "the provider failed")
                    try:
                        self._fetch_locked()
                    except Exception as exc:
                        self._failed_at = self._clock()
                        self._last_error = str(exc) or type(exc).__name__
                        raise
                keys = self._keys
        assert keys is not None
        return keys

    def renew_after_rejection(self, rejected: KeySet) -> KeySet | None:
        """The server refused ``rejected``: renew once (single flight) and return the new keys.

        Returns None when no different keys could be had, so the caller fails with EACCES instead of
        retrying in a loop.
        """
        with self._lock:
            keys = self._keys
            if keys is not None and keys != rejected:
                return keys  # another caller already renewed
            if self._failed_recently():
                return None  # the attempt we waited for (or one just before) failed: share that
            if (self._renewed_on_rejection_at is not None and
                    self._clock() - self._renewed_on_rejection_at < self.policy.rejection_grace):
                log.info("keys renewed after a rejection were rejected too within %.0fs; not "
                         "renewing again", self.policy.rejection_grace)
                return None
            try:
                self._fetch_locked()
            except Exception as exc:  # noqa: BLE001 - reported, and the caller fails cleanly
                self._note_failure(exc)
                return None
            self._renewed_on_rejection_at = self._clock()
            new = self._keys
        self._wake.set()  # reschedule the background renewal for the new keys
        return new if new != rejected else None

    # -- background thread --------------------------------------------------------------------

    def start(self) -> None:
        """Fetch the first keys (raising if the provider refuses) and start the renewal thread."""
        self.current()
        self._thread = threading.Thread(target=self._run, name="s3mount-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            due = self._next_at if self._next_at is not None else now
            if due > now:
                self._wake.wait(min(due - now, 3600))
                self._wake.clear()
                continue
            with self._lock:
                try:
                    self._fetch_locked()
                except Exception as exc:  # noqa: BLE001 - the loop must survive any provider bug
                    self._note_failure(exc)

    def _fetch_locked(self) -> None:
        """Fetch new keys from the provider; caller holds ``_lock``."""
        old = self._keys
        new = self.provider.fetch()
        now = self._clock()
        if old is not None and old.bucket and new.bucket and old.bucket != new.bucket:
            raise ProviderError(
                f"provider switched bucket from {old.bucket!r} to {new.bucket!r}; refusing "
                "(a different user or client?)"
            )
        self._keys = new
        self._issued_at = now
        self._failures = 0
        self._last_error = None
        self._login_required = False
        self._failed_at = None
        self._next_at = refresh_at(new, now, self.policy, self._rand())
        if old is not None:
            self._renewals += 1
            changed = "new" if new.access_key != old.access_key else "same"
            log.info("credentials renewed (%s %s, %s)", changed, _key_hint(new),
                     _expiry(new, now))
        else:
            log.info("credentials obtained from %s (%s, %s)", self.provider.name,
                     _key_hint(new), _expiry(new, now))

    def _failed_recently(self) -> bool:
        return (self._failed_at is not None
                and self._clock() - self._failed_at < self.policy.failure_memory)

    def _note_failure(self, exc: Exception) -> None:
        self._failures += 1
        self._last_error = str(exc) or type(exc).__name__
        self._login_required = bool(getattr(exc, "login_required", False))
        now = self._clock()
        self._failed_at = now
        delay = backoff_delay(self._failures, self.policy, self._rand())
        keys = self._keys
        if self._login_required:
            log.error("credential renewal needs a new login: %s. Run `s3mount login` for this "
                      "profile; the mount keeps serving until the current keys expire",
                      self._last_error)
            delay = max(delay, self.policy.backoff_max)
        elif keys is not None and not keys.expired(now):
            log.warning("credential renewal failed (%s); retrying in %.0fs, current keys still "
                        "valid (%s)", self._last_error, delay, _expiry(keys, now))
        else:
            log.error("credential renewal failed (%s) and no valid keys remain; retrying in %.0fs",
                      self._last_error, delay)
        self._next_at = now + delay

    def status(self) -> RefreshStatus:
        keys = self._keys
        return RefreshStatus(
            provider=self.provider.name,
            access_key_id=_key_hint(keys) if keys else None,
            expires_at=keys.expires_at if keys else None,
            next_refresh_at=self._next_at,
            renewals=self._renewals,
            last_error=self._last_error,
            login_required=self._login_required,
        )


def _key_hint(keys: KeySet) -> str:
    """An access key id shortened for logs: enough to tell two apart, too little to use."""
    ak = keys.access_key
    return f"key …{ak[-4:]}" if len(ak) > 8 else "key ****"


def _expiry(keys: KeySet, now: float) -> str:
    """``expiring in 3600s``, or ``not expiring`` for keys without a lifetime."""
    rem = keys.remaining(now)
    return "not expiring" if rem == float("inf") else f"expiring in {rem:.0f}s"
