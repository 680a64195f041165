"""Wiring of one mount: credentials -> store -> filesystem core -> FUSE, and its lifetime.

``prepare()`` does everything that can fail for a reason the user can fix (credentials, bucket,
mountpoint) before anything is mounted, so ``s3mount mount`` answers with one clear line.
``serve()`` runs the FUSE loop in trio with the background tasks (status publishing, leftover
uploads, signal handling) in one nursery, and on the way out uploads what is still dirty.

The loop ends when the kernel ends the session: the mountpoint was unmounted (``s3mount umount``,
``umount(8)``) and, after a lazy unmount, the last open file on it was closed. Until then every open
descriptor keeps working, so a file being written when a lazy unmount came is still stored whole
when it is closed. SIGTERM, SIGINT and SIGHUP (``systemctl stop``, Ctrl-C) unmount: normally when
nothing is open, else lazily (the promise above holds), never by tearing the session down under a
writer. SIGUSR1 says an outside lazy unmount happened (``s3mount umount --lazy``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyfuse3
import trio

from . import runtime
from .config import config_path
from .credentials.base import Provider, ProviderError
from .credentials.refresher import Refresher, RefreshPolicy
from .errors import AccessDenied, NotFound, S3MountError, Unavailable
from .fs.attrs import Defaults
from .fs.core import Filesystem
from .fs.fuse_ops import FuseOperations
from .fs.metacache import MetaCache
from .fs.paths import KeyMapper
from .fs.settings import FsConfig
from .fs.staging import StagingArea
from .notify import notify
from .options import MountOptions
from .recovery import (
    Identity,
    find_leftovers,
    label_roots,
    normalize_endpoint,
    private_dir,
    same_bucket,
    sort_elsewhere,
)
from .sources import SourceError, parse_source
from .store.base import KeySet
from .store.s3 import S3Store, StoreConfig

log = logging.getLogger(__name__)

STATUS_INTERVAL = 5.0
STOP_STATUS_INTERVAL = 1.0
"""While uploads run or the mount stops: how often status (and progress) is published; while
stopping, systemd's stop timeout is extended (by EXTEND_FACTOR times this) as long as uploads
remain."""
EXTEND_FACTOR = 30
UNMOUNT_TIMEOUT = 30.0
MiB = 1024 * 1024


class MountError(S3MountError):
    """The mount cannot be made; the message is the one line the user sees."""


@dataclass
class MountSpec:
    """What to mount where, with which credentials."""

    bucket: str | None
    prefix: str
    mountpoint: str
    provider: Provider
    options: MountOptions
    profile: str | None = None
    source: str = ""


@dataclass
class Prepared:
    spec: MountSpec
    refresher: Refresher
    store: S3Store
    keys: KeySet
    bucket: str


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s3mount")


def check_mountpoint(path: str, *, nonempty: bool = False) -> str:
    """The absolute mountpoint, or a MountError saying what is wrong with it.

    A directory with files in it is refused unless ``nonempty`` (as s3fs does): the mount would
    hide them, and a user who mounted on the wrong directory would think them lost.
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        # ENOTCONN (or EIO): a FUSE mount whose process died is still there.
        dead = exc.errno in (errno.ENOTCONN, errno.EIO)
        raise MountError(f"mountpoint {path} is not accessible ({exc.strerror})" +
                         (f"; a mount whose process ended may be left on it: fusermount3 -u "
                          f"{path}" if dead else "")) from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(real):
        raise MountError(f"{path} is already a mount point")
    if not nonempty:
        try:
            entries = os.listdir(real)
        except OSError:
            entries = []  # not readable by us: the kernel decides, as without this check
        if entries:
            raise MountError(f"mountpoint {path} is not empty: the mount would hide its "
                             f"{len(entries)} entries; use an empty directory, or -o nonempty to "
                             "mount over them")
    return real


def prepare(spec: MountSpec) -> Prepared:
    """Get keys, check the bucket and the mountpoint. Raises MountError with one clear line."""
    spec.mountpoint = check_mountpoint(spec.mountpoint, nonempty=spec.options.nonempty)
    o = spec.options
    refresher = Refresher(spec.provider, policy=RefreshPolicy())
    try:
        keys = refresher.current()
    except ProviderError as exc:
        raise MountError(f"cannot get credentials from {spec.provider.name}: {exc}") from None
    bucket = spec.bucket or keys.bucket
    if not bucket:
        raise MountError(_no_bucket(spec))
    try:
        parse_source(f"s3://{bucket}")  # it goes into the fsname= mount option
    except SourceError:
        raise MountError(f"{bucket!r} is not a valid bucket name") from None
    endpoint = o.endpoint_url or keys.endpoint_url
    if o.no_verify_ssl:
        log.warning("TLS certificate verification is OFF (-o no_verify_ssl): anyone on the network "
                    "path can read and change your data")
    store = S3Store(StoreConfig(
        bucket=bucket, endpoint_url=endpoint, region=o.region or keys.region,
        verify_ssl=not o.no_verify_ssl, timeout=o.timeout, part_size=o.part_size * MiB,
        max_concurrency=o.max_uploads, addressing_style=o.addressing_style,
    ), refresher)
    try:
        store.check()
    except NotFound:
        raise MountError(f"bucket {bucket!r} does not exist at {endpoint or 'the AWS default'}") \
            from None
    except AccessDenied as exc:
        raise MountError(_refused(spec, keys, bucket, endpoint, exc)) from None
    except Unavailable:
        raise MountError(f"cannot reach the S3 endpoint {endpoint or '(AWS default)'}") from None
    return Prepared(spec, refresher, store, keys, bucket)


def _refused(spec: MountSpec, keys: KeySet, bucket: str, endpoint: str | None,
             exc: AccessDenied) -> str:
    """Which keys (where from, the key id's last 4 characters: enough to tell which, too little
    to use), which bucket, and what to check."""
    if spec.profile is not None:
        source = f"profile {spec.profile!r} ({spec.provider.name})"
    else:
        source = getattr(spec.provider, "source", spec.provider.name)
    ak = keys.access_key
    key_id = f"access key id ending {ak[-4:]!r}" if len(ak) > 8 else "a short access key id"
    reason = str(exc).rpartition(": ")[2]
    generic = ("access denied", "credentials rejected and not renewable")
    return (f"the keys from {source} ({key_id}) were refused for bucket {bucket!r} at "
            f"{endpoint or 'the AWS default endpoint'}: check that this key id and its secret are "
            "right and may list this bucket" + ("" if reason in generic else f" ({reason})"))


def _no_bucket(spec: MountSpec) -> str:
    """What to do when nothing named a bucket: only Cleverbase assigns one by itself."""
    if spec.profile is None:
        return "no bucket given: mount s3://BUCKET[/PREFIX]"
    return (f"no bucket given and {spec.provider.name} does not assign one: add "
            f"bucket = \"NAME\" to [profiles.{spec.profile}] in {config_path()}, or mount "
            f"s3://NAME -o profile={spec.profile}")


def _fuse_options(p: Prepared) -> set[str]:
    """The source goes in as the user gave it (``work``, ``s3://bucket/prefix``): that is what
    fstab says, and libmount compares it with the mounted source, so a second ``mount -a`` sees
    the entry mounted and skips it. ``sources.parse_source`` has checked its alphabet."""
    o = p.spec.options
    fsname = p.spec.source or f"s3://{p.bucket}"
    opts = {"default_permissions", f"fsname={fsname}", "subtype=s3mount", "noatime"}
    if o.allow_other:
        opts.add("allow_other")
    if o.ro:
        opts.add("ro")
    return opts


M_ARENA_MAX = -8  # glibc's malloc.h
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """Let glibc's malloc keep 2 arenas instead of up to 8 per core.

    Every worker thread that allocates gets an arena of its own by default, and the parts they
    fetch and send (up to 8 MiB each) leave each arena holding freed memory it does not return.
    Eight files read at once under a 64 MiB read budget peaked at 242 MiB of RSS with glibc's
    default and at 162 MiB with 2 arenas, for the same CPU per byte on one file read or written
    alone (bench/README.md). A user's MALLOC_ARENA_MAX still wins.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # absent outside glibc
    if mallopt is not None:
        mallopt(M_ARENA_MAX, MALLOC_ARENAS)


PR_SET_DUMPABLE = 4  # linux/prctl.h


def protect_process(*, background: bool) -> None:
    """Keep the keys out of core dumps, and a background mount out of the user's directory.

    A crash of a dumpable mount process writes its memory, secret key and session token
    included, to a core file in its working directory (the directory the mount was started from).
    A non-dumpable process writes no core and cannot be read through ptrace or /proc/PID/mem by
    other processes of the same user. A background process also changes to ``/`` (like every
    daemon), so it neither keeps that directory busy nor writes anything there. Called before
    the first keys are fetched; the foreground keeps its directory (the user started it there).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot mark the mount process non-dumpable: %s",
                    os.strerror(ctypes.get_errno()))
    if background:
        os.chdir("/")


def _check_private_dir(path: str) -> None:
    """Staged data and crash-recovery records live here: the directory must be ours alone, or
    someone else could read what we stage or plant files for recovery to upload."""
    if not os.path.lexists(path) or private_dir(path):
        return
    st = os.lstat(path)
    raise MountError(f"cache directory {path} is not private to you (owner uid {st.st_uid}, "
                     f"mode {stat.S_IMODE(st.st_mode):o}); remove it or use another cache_dir")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """The lines written to file descriptor 2 meanwhile (by libfuse and the fusermount3 it runs),
    collected into the yielded list and then written to the real stderr (the log) as well."""
    said: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read()
            with contextlib.suppress(OSError):
                os.write(2, text)
            said += [line.strip() for line in text.decode(errors="replace").splitlines()
                     if line.strip()]


class MountRunner:
    """One mounted filesystem from ``pyfuse3.init`` to unmount."""

    def __init__(self, p: Prepared) -> None:
        self.p = p
        o = p.spec.options
        # Per endpoint, bucket and prefix, so the next mount of the same bucket finds its
        # leftovers; ``find_leftovers`` also looks in the roots of other spellings and prefixes.
        self.identity = Identity(normalize_endpoint(p.store.config.endpoint_url), p.bucket,
                                 KeyMapper(p.spec.prefix).prefix)
        cache_dir = o.cache_dir or default_cache_dir()
        root = os.path.join(cache_dir, self.identity.digest())
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise MountError(f"cannot use cache directory {cache_dir}: {exc.strerror}") from None
        for path in (root, os.path.join(root, "staging")):
            _check_private_dir(path)
        label_roots(cache_dir, self.identity, p.store.config.endpoint_url)
        self.staging = StagingArea(os.path.join(root, "staging"))
        # Before the mount serves: new staging files would otherwise look like leftovers.
        self.leftovers = find_leftovers(cache_dir, self.identity, self.staging)
        self.meta = MetaCache(os.path.join(root, "attrs.sqlite"))
        uid = o.uid if o.uid is not None else os.getuid()
        gid = o.gid if o.gid is not None else os.getgid()
        self.fs = Filesystem(
            p.store, KeyMapper(p.spec.prefix),
            FsConfig(defaults=Defaults(uid, gid, o.file_mode, o.dir_mode), read_only=o.ro,
                     attr_timeout=o.attr_timeout, dir_timeout=o.dir_timeout,
                     neg_timeout=o.neg_timeout, posix_metadata=not o.no_posix_metadata,
                     part_size=o.part_size * MiB, async_upload=o.async_upload,
                     cache_limit=o.cache_size * MiB, buffer_limit=o.buffer_size * MiB,
                     store_concurrency=p.store.config.max_pool_connections,
                     shared_index=not o.no_shared_index, xattrs=not o.no_xattr,
                     timeout=o.timeout),
            self.staging, self.meta,
        )
        self.ops = FuseOperations(self.fs)
        self.started_at = time.time()
        self._status_changed = trio.Event()
        """Set to publish the status now rather than at the next interval."""
        self._refused_shown = 0
        """How many refused uploads the published status lists (a new one is shown at once)."""
        self.stopping = False
        self.detached = False
        self.device: str | None = None
        """Our mount's device (``major:minor``) in the mount table, once mounted."""

    def mount(self) -> None:
        """Mount (raises MountError when the kernel refuses); the loop runs in ``serve``."""
        failure = None
        with _stderr_captured() as said:
            try:
                pyfuse3.init(self.ops, self.p.spec.mountpoint, _fuse_options(self.p))
            except RuntimeError as exc:
                failure = str(exc)
        if failure is not None:
            # libfuse's own line ("fuse: failed to open /dev/fuse: Permission denied") says why;
            # pyfuse3's ("fuse_session_mount failed") only that it failed.
            raise MountError(f"cannot mount on {self.p.spec.mountpoint}: "
                             f"{said[-1] if said else failure}")
        self.device = (runtime.devices_at(self.p.spec.mountpoint) or [None])[-1]

    def serve(self, on_ready: Any = None) -> int:
        """Run until unmounted or signalled; returns the number of uploads that failed at exit."""
        _limit_malloc_arenas()  # before the refresher and the worker threads exist
        self.p.refresher.start()
        try:
            return trio.run(self._main, on_ready)
        finally:
            self.p.refresher.stop()
            self.meta.close()
            self.leftovers.release()
            self.staging.close()

    async def _main(self, on_ready: Any) -> int:
        failed: int | None = None
        """Files that could not be stored, once the uploads after the unmount are done."""
        try:
            async with trio.open_nursery() as nursery:
                self.fs.nursery = nursery
                # Signals are handled before READY=1 goes out: a SIGTERM right after it must
                # still flush and unmount cleanly.
                await nursery.start(self._signals)
                nursery.start_soon(self._publish_status)
                nursery.start_soon(self.fs.writeback.run)
                nursery.start_soon(self.fs.shared.run)
                nursery.start_soon(self._recover)
                # Published before the mount is reported ready, so a `s3mount umount` run right
                # after `s3mount mount` returns finds this process and waits for its uploads.
                self._publish_once()
                if on_ready is not None:
                    on_ready()
                await pyfuse3.main()
                # Unmounted: upload what is left while the writeback and the streams' part
                # uploads still run in this nursery.
                failed = await self._after_unmount()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if failed is None:  # the loop ended by an error: store what can be stored
                    failed = await self.fs.flush_all()
                await self.fs.shared.flush_all()
                self.meta.commit()
            pyfuse3.close(unmount=True)
            if failed:
                with contextlib.suppress(OSError, S3MountError):
                    runtime.leave_outcome(self.p.spec.mountpoint, failed)
            self._withdraw_status()
        return failed or 0

    async def _after_unmount(self) -> int:
        """Upload what is still pending; returns how many files could not be stored (they
        stay in the cache for the next mount). Each is tried once here, not again on the way
        out: a failing upload costs up to ``timeout`` while the user's umount waits."""
        self.stopping = self.detached = True
        pending = self.fs.pending_uploads()
        if pending:
            log.info("unmounted; uploading %d file(s) still pending", pending)
            self._publish_once()  # under the detached name at once: the old one reads as stale
        failed = await self.fs.flush_all()
        if failed:
            log.error("uploads after the unmount finished; %d of %d file(s) could not be stored "
                      "and stay in the cache for the next mount", failed, pending)
        elif pending:
            log.info("uploads after the unmount finished: all %d file(s) stored", pending)
        return failed

    async def _recover(self) -> None:
        """Upload what earlier runs left: this endpoint's first, then that of other endpoints
        shown to serve this bucket (a check that may wait for an endpoint that is gone)."""
        found = self.leftovers
        n = await self.fs.writeback.recover(found.ours)
        found.ours.clear()
        same: dict[str | None, bool] = {}
        for endpoint in {a.owner.endpoint for a in found.elsewhere}:
            same[endpoint] = await trio.to_thread.run_sync(self._same_bucket, endpoint)
        sort_elsewhere(found, self.identity, same)
        self._status_changed.set()  # the stranded files are known now
        n += await self.fs.writeback.recover(found.ours)
        found.ours.clear()
        found.release()
        if n:
            log.info("recovered %d file(s) left unuploaded by an earlier run", n)

    def _same_bucket(self, endpoint: str | None) -> bool:
        """Whether ``endpoint`` serves this mount's bucket (then its leftovers are ours)."""
        theirs = S3Store(replace(self.p.store.config, endpoint_url=endpoint),
                         _KeysFor(self.p.refresher, endpoint))
        key = f"{self.identity.prefix}.s3mount-probe-{os.getpid()}"
        return same_bucket(self.p.store, theirs, key)

    async def _signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                       ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                       signal.SIGUSR1) as sigs:
            task_status.started()
            async for sig in sigs:
                if sig == signal.SIGUSR1:
                    self._note_detached("was detached by a lazy unmount")
                    continue
                if self.stopping:
                    continue
                log.info("received %s: unmounting, then uploading pending data",
                         signal.Signals(sig).name)
                self.stopping = True
                notify("STOPPING=1")
                await self._unmount()

    async def _unmount(self) -> None:
        """Unmount, lazily when files are open (the loop then ends when the last one closes)."""
        if (await self._fusermount("-u"))[0]:
            return
        done, reason = await self._fusermount("-u", "-z")
        if done:
            self._note_detached("is busy, so it was detached lazily")
            return
        log.error("cannot unmount %s (%s); ending the session", self.p.spec.mountpoint, reason)
        pyfuse3.terminate()

    async def _fusermount(self, *flags: str) -> tuple[bool, str]:
        """Run ``fusermount3 FLAGS -- MOUNTPOINT``: (succeeded, its error message)."""
        with trio.move_on_after(UNMOUNT_TIMEOUT):
            r = await trio.run_process(["fusermount3", *flags, "--", self.p.spec.mountpoint],
                                       capture_stdout=True, capture_stderr=True, check=False)
            return r.returncode == 0, r.stderr.decode(errors="replace").strip()
        return False, f"fusermount3 did not finish within {UNMOUNT_TIMEOUT:.0f}s"

    def _note_detached(self, how: str) -> None:
        self.stopping = self.detached = True
        open_files = len(self.fs.registry.handles)
        if open_files:
            log.info("%s %s: %d open file(s) keep working and each is stored when closed; the "
                     "mount process exits after the last", self.p.spec.mountpoint, how, open_files)
        self._publish_once()

    def status(self) -> dict[str, Any]:
        st = self.p.refresher.status()
        return {
            "mountpoint": self.p.spec.mountpoint,
            "pid": os.getpid(),
            "profile": self.p.spec.profile,
            "provider": st.provider,
            "bucket": self.p.bucket,
            "prefix": self.p.spec.prefix,
            "endpoint": self.p.store.config.endpoint_url,
            "credentials_expire_at": st.expires_at,
            "next_renewal_at": st.next_refresh_at,
            "renewals": st.renewals,
            "pending_uploads": self.fs.pending_uploads(),
            "failed_uploads": self.fs.writeback.failing(),
            "refused_uploads": self.fs.writeback.refused,
            "cache_bytes": self.staging.used_bytes(),
            "started_at": self.started_at,
            "last_error": st.last_error,
            "source": self.p.spec.source,
            "read_only": self.p.spec.options.ro,
            "stranded_uploads": [asdict(s) | {"message": s.message()}
                                 for s in self.leftovers.stranded],
            "uploads": self.fs.upload_progress(),
            "open_files": len(self.fs.registry.handles),
            "detached": self.detached,
        }

    def _publish_once(self) -> dict[str, Any]:
        if not self.detached and self.device not in runtime.devices_at(self.p.spec.mountpoint):
            # umount -l from outside; the mountpoint may be mounted again already (by another
            # process, whose entry has the same name: this one must not replace it)
            self._note_detached("was unmounted")
        state = self.status()
        self._refused_shown = len(state["refused_uploads"])
        try:
            runtime.publish(self.p.spec.mountpoint, state)
        except (OSError, S3MountError) as exc:
            log.debug("could not publish status: %s", exc)
        return state

    async def _publish_status(self) -> None:
        while True:
            state = self._publish_once()
            if self.stopping:
                # systemd would kill a stop that takes longer than TimeoutStopSec while uploads
                # still make progress: extend it for as long as closed files remain to store
                # (not for files held open: a program may hold one for ever).
                lines = [f"STATUS=stopping: {runtime.progress_line(state['uploads'])}"]
                if any(not u["open"] for u in state["uploads"]):
                    lines.append(f"EXTEND_TIMEOUT_USEC="
                                 f"{int(EXTEND_FACTOR * STOP_STATUS_INTERVAL * 1e6)}")
                notify(*lines)
            else:
                notify(f"STATUS=pending uploads {state['pending_uploads']}, "
                       f"next key renewal {_when(state['next_renewal_at'])}")
            self.meta.commit()
            await self._until_next_publish()

    async def _until_next_publish(self) -> None:
        """STATUS_INTERVAL; at once when something changed; after a second while uploads run
        or wait, or the mount stops: progress is worth showing live (one small file a second)."""
        with trio.move_on_after(STATUS_INTERVAL):
            while True:
                with trio.move_on_after(STOP_STATUS_INTERVAL):
                    await self._status_changed.wait()
                    break
                if self.stopping or any(u["rate"] is not None or not u["open"]
                                        for u in self.fs.upload_progress()) \
                        or len(self.fs.writeback.refused) != self._refused_shown:
                    break
        self._status_changed = trio.Event()

    def _withdraw_status(self) -> None:
        with contextlib.suppress(OSError, S3MountError):
            runtime.withdraw(self.p.spec.mountpoint)
            runtime.withdraw(self.p.spec.mountpoint, detached=True)


class _KeysFor:
    """The mount's keys aimed at another endpoint (a key set's endpoint beats the store's)."""

    def __init__(self, keys: Refresher, endpoint: str | None) -> None:
        self._keys = keys
        self._endpoint = endpoint

    def current(self) -> KeySet:
        return replace(self._keys.current(), endpoint_url=self._endpoint)

    def renew_after_rejection(self, rejected: KeySet) -> KeySet | None:
        return None  # a check, not worth a renewal: it then says "cannot tell"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "not scheduled"
    return time.strftime("%H:%M:%S", time.localtime(epoch))
