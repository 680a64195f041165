"""Which staging areas a mount recovers after a crash, whatever the endpoint was called then.

Staged data waits in ``<cache_dir>/<digest>/slot-N/`` (``fs/staging.py``). The digest names one
``endpoint|bucket|prefix``, with the endpoint URL normalised (scheme and host lower-case, no
default port, no trailing slash), so ``http://Host:80/`` and ``http://host`` share a staging root.
Each root also says whom it belongs to in ``identity.json``, because the same bucket can be
reached under names no normalisation equates (another host name, a proxy in front, a prefix
inside another mount's prefix). At mount, ``find_leftovers`` reads every identity in the cache
directory and collects, from each slot no live mount holds, the records of this bucket:

* under this mount's prefix and through this endpoint: recovered by this mount;
* through another endpoint: recovered when ``same_bucket`` proves the other endpoint serves this
  very bucket (an upload started through one is seen through the other); otherwise they stay;
* outside this mount's prefix: they stay, for a mount that can reach them.

What stays is *stranded*: it is logged as a warning and shown by ``s3mount status``, so that
nothing a close() confirmed waits unnoticed. A root written by an earlier version has no identity
file; the roots of the spellings it would have used for this mount are adopted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .errors import S3MountError
from .fs.staging import Record, StagingArea, StagingFile, slot_dirs
from .store.base import ObjectStore

log = logging.getLogger(__name__)

IDENTITY = "identity.json"
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_endpoint(url: str | None) -> str | None:
    """One spelling per endpoint: ``HTTP://Host:80/`` -> ``http://host``; None stays None."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Identity:
    """Whose staged data a staging root holds."""

    endpoint: str | None
    """Normalised (None: the AWS default)."""
    bucket: str
    prefix: str
    """The mount's key prefix (``a/b/``, or empty for the whole bucket)."""

    def digest(self, endpoint: str | None = None) -> str:
        """The root's name. With a normalised endpoint it is what earlier versions computed from
        the same spelling, so their staged data is found where they left it."""
        ident = f"{endpoint or self.endpoint}|{self.bucket}|{self.prefix.rstrip('/')}"
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    def reaches(self, key: str) -> bool:
        return key.startswith(self.prefix)


def label_roots(cache_dir: str, ident: Identity, raw_endpoint: str | None) -> None:
    """Write the identity of this mount's root (``cache_dir/ident.digest()``, made by the
    caller). Roots an earlier version made for this bucket and prefix under another spelling of
    the endpoint (the one given now, or with a trailing slash) are labelled too, so
    ``find_leftovers`` sees them."""
    _label(os.path.join(cache_dir, ident.digest()), ident)
    spellings = {raw_endpoint, f"{ident.endpoint}/"} - {None, ident.endpoint}
    for spelling in spellings:
        old = os.path.join(cache_dir, ident.digest(spelling))
        if private_dir(old) and not os.path.exists(os.path.join(old, IDENTITY)):
            _label(old, ident)


def _label(root: str, ident: Identity) -> None:
    path = os.path.join(root, IDENTITY)
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        if json.load(f) == asdict(ident):
            return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(asdict(ident), f)
    os.replace(tmp, path)


@dataclass
class Area:
    """A slot of another run, held while this mount recovers from it."""

    owner: Identity
    area: StagingArea
    files: list[tuple[StagingFile, Record]] = field(default_factory=list)


@dataclass
class Stranded:
    """Records of this bucket that this mount cannot upload (shown by ``s3mount status``)."""

    endpoint: str | None
    bucket: str
    prefix: str
    files: int
    path: str
    reason: str

    def message(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return (f"{self.files} file(s) written before a crash to {where} through "
                f"{self.endpoint or 'the AWS default endpoint'} wait in {self.path}: "
                f"{self.reason}")


@dataclass
class Leftovers:
    """What a mount found at start: to recover now, and to check first (other endpoints)."""

    ours: list[tuple[StagingFile, Record]] = field(default_factory=list)
    elsewhere: list[Area] = field(default_factory=list)
    """Slots of this bucket through another endpoint: recovered if ``same_bucket`` says so."""
    held: list[StagingArea] = field(default_factory=list)
    """Slots locked for recovery, released by ``release`` once it is done."""
    stranded: list[Stranded] = field(default_factory=list)

    def release(self) -> None:
        for area in self.held:
            area.close()
        self.held.clear()


def find_leftovers(cache_dir: str, me: Identity, own: StagingArea) -> Leftovers:
    """Collect the records of ``me.bucket`` in ``cache_dir`` from slots no live mount holds
    (``own`` is this mount's slot). Run before the mount serves: data files without a record in
    these slots are deleted here, as they are in ``StagingArea.leftovers``."""
    found = Leftovers(ours=list(own.leftovers()))
    for root, owner in _roots(cache_dir, me.bucket):
        for directory in slot_dirs(root):
            if directory == own.dir:
                continue
            area = StagingArea.take(directory)
            if area is None:
                continue  # a live mount's
            files = list(area.leftovers())
            if not files:
                area.close()
                continue
            found.held.append(area)
            if owner.endpoint == me.endpoint:
                found.ours += files
            else:
                found.elsewhere.append(Area(owner, area, files))
    outside = [(f, r) for f, r in found.ours if not me.reaches(r.key)]
    if outside:
        found.ours = [(f, r) for f, r in found.ours if me.reaches(r.key)]
        _strand(found, me.endpoint, me.bucket, outside,
                "their keys are outside this mount's prefix; mount the bucket (or their "
                "prefix) to upload them")
    return found


def _roots(cache_dir: str, bucket: str) -> list[tuple[str, Identity]]:
    out = []
    try:
        names = sorted(os.listdir(cache_dir))
    except OSError:
        return []
    for name in names:
        root = os.path.join(cache_dir, name)
        if not private_dir(root):
            continue  # someone else's: not a source of files to upload
        try:
            with open(os.path.join(root, IDENTITY)) as f:
                owner = Identity(**json.load(f))
        except (OSError, ValueError, TypeError):
            continue
        if owner.bucket == bucket:
            out.append((os.path.join(root, "staging"), owner))
    return out


def private_dir(path: str) -> bool:
    """A directory of ours alone (owner, no group or other bits): staged data and recovery
    records are trusted only there, or someone else could read them or plant files to upload."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and \
        not stat.S_IMODE(st.st_mode) & 0o077


def _strand(found: Leftovers, endpoint: str | None, bucket: str,
            files: list[tuple[StagingFile, Record]], reason: str) -> None:
    by_dir: dict[str, list[tuple[StagingFile, Record]]] = {}
    for f, r in files:
        by_dir.setdefault(f.area.dir, []).append((f, r))
    for directory, group in by_dir.items():
        prefix = os.path.commonprefix([r.key for _, r in group]).rpartition("/")[0]
        s = Stranded(endpoint, bucket, prefix, len(group), directory, reason)
        found.stranded.append(s)
        log.warning("%s", s.message())
        for f, _ in group:
            f.close()


def sort_elsewhere(found: Leftovers, me: Identity, same: dict[str | None, bool]) -> None:
    """Move the records of other endpoints to ``ours`` where ``same[endpoint]`` proved the
    endpoint serves this bucket; strand the rest."""
    for a in found.elsewhere:
        files = a.files
        if same.get(a.owner.endpoint):
            reach = [(f, r) for f, r in files if me.reaches(r.key)]
            found.ours += reach
            files = [(f, r) for f, r in files if not me.reaches(r.key)]
            reason = ("their keys are outside this mount's prefix; mount the bucket (or their "
                      "prefix) to upload them")
        else:
            reason = (f"this mount cannot tell whether {a.owner.endpoint or 'the AWS default'} "
                      "serves the same bucket (it did not answer, or it is another server); "
                      "mount the bucket through that endpoint to upload them")
        if files:
            _strand(found, a.owner.endpoint, me.bucket, files, reason)
    found.elsewhere.clear()


def same_bucket(ours: ObjectStore, theirs: ObjectStore, key: str) -> bool:
    """Whether two endpoints serve one bucket: a multipart upload started through ours is seen
    (takes a part) through theirs. Nothing appears in the bucket; the upload is aborted."""
    try:
        upload_id = ours.create_multipart(key, metadata={})
    except S3MountError as exc:
        log.info("cannot check whether another endpoint serves this bucket: %s", exc)
        return False
    try:
        theirs.upload_part(key, upload_id, 1, b"")
        return True
    except S3MountError as exc:  # NoSuchUpload from another server, or no answer
        log.info("the other endpoint does not know an upload started through this one (%s)",
                 exc)
        return False
    finally:
        ours.abort_multipart(key, upload_id)
